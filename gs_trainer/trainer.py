"""The training loop: pick a camera, render, loss, backward, evaluate, save, densify, Adam step, checkpoint.

At an iteration that is both a save (or test) iteration and a densification one, the Gaussians are
evaluated and saved *before* densification, as in the original trainer: the stored model is never one of
freshly split and cloned, not yet optimised Gaussians.  Checkpoints are written after the Adam step, so
that a resumed run continues exactly.

The trainer owns no parsing and no file formats: it gets a typed config, a scene, and a ``RunFolder``-like
sink (``save_gaussians``, ``save_checkpoint``, ``scalar``, ``image``) and decides only *when* to use them.

Every random choice (camera order, random backgrounds, split offsets) comes from two generators owned by
the trainer and saved in checkpoints, so a resumed run repeats an uninterrupted one exactly on the CPU
(and up to the float summation order of the atomics on CUDA).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Optional

import torch
from tqdm import tqdm

from .config import TrainConfig
from .densify import DensifyStrategy
from .losses import gaussian_splatting_loss
from .metrics import image_metrics
from .model import GaussianModel
from .optim import batch_scaling, load_optimizer_state, make_optimizer, position_lr_schedule, set_position_lr
from .renderer import render

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
EMA_WEIGHT = 0.4          # the original's smoothing of the loss shown in the progress bar
NUM_TRAIN_EVAL_VIEWS = 5  # training views scored at each evaluation, as in the original (5, 10, ..., 25)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the message says where and which checkpoint is the last good one."""


class TrainingInterrupted(RuntimeError):
    """A stop was requested (SIGINT / SIGTERM): the iteration finished and ``checkpoint`` holds its state."""

    def __init__(self, iteration: int, checkpoint: str, signum: int) -> None:
        super().__init__(f"interrupted at iteration {iteration}; checkpoint {checkpoint}")
        self.iteration, self.checkpoint, self.signum = iteration, checkpoint, signum


def checkpoint_problem(state, cfg: TrainConfig) -> Optional[str]:
    """Why ``state`` (a loaded checkpoint) cannot resume a run configured by ``cfg``; None if it can.

    Checks what needs no scene: the format, the iteration against ``--iterations``, the SH degree.  The
    cameras are checked against the scene by ``Trainer.load_state``.
    """
    if isinstance(state, (tuple, list)) and len(state) == 2 and isinstance(state[1], int):
        return ("a checkpoint of the original 3DGS trainer (a (params, iteration) tuple), which gs-train "
                "cannot resume: start a new run")
    if not isinstance(state, dict):
        return f"not a gs-train checkpoint (it holds a {type(state).__name__}, not a dict)"
    if state.get("version") != CHECKPOINT_VERSION:
        return f"checkpoint version {state.get('version')!r} is not {CHECKPOINT_VERSION} (not written by this gs-train)"
    missing = [k for k in ("iteration", "model", "optimizer", "densify", "camera_gen", "gen", "camera_order")
               if k not in state]
    if missing:
        return f"not a complete gs-train checkpoint (missing {', '.join(missing)})"
    iteration, total = int(state["iteration"]), cfg.optim.iterations
    if iteration >= total:
        return (f"it is at iteration {iteration} and --iterations is {total}: nothing left to train "
                f"(pass --iterations above {iteration} to continue)")
    model = state["model"]
    degree = model.get("max_sh_degree") if isinstance(model, dict) else None
    if degree != cfg.model.sh_degree:
        return (f"it holds Gaussians of SH degree {degree} but --sh_degree is {cfg.model.sh_degree} "
                f"(pass --sh_degree {degree} to resume it)")
    return None


class Trainer:
    def __init__(self, cfg: TrainConfig, scene, sink, *, device: str | torch.device = "cpu",
                 model: Optional[GaussianModel] = None) -> None:
        self.cfg = cfg
        self.scene = scene
        self.sink = sink
        self.device = torch.device(device)
        if not scene.train_cameras:
            raise ValueError("the scene has no training cameras")
        self.model = model or GaussianModel.from_points(scene.points, scene.colors, cfg.model.sh_degree, self.device)
        self.extent = float(scene.extent)
        self.batch_size = self.resolve_batch_size(cfg.optim.batch_size)
        self.lr_scale = batch_scaling(self.batch_size)[0]
        self.optimizer = make_optimizer(self.model, cfg.optim, self.extent, self.batch_size)
        self.position_lr = position_lr_schedule(cfg.optim, self.extent)
        self.strategy = DensifyStrategy(cfg.densify, self.extent)
        self.strategy.reset_stats(self.model.num_gaussians, self.device)
        self.camera_gen = torch.Generator().manual_seed(cfg.run.seed)
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.run.seed)
        self.camera_order: list[int] = []
        self.iteration = 0
        self.last_checkpoint: Optional[str] = None
        self.bg = torch.tensor([1.0, 1.0, 1.0] if cfg.model.white_background else [0.0, 0.0, 0.0],
                               device=self.device)
        self.stop_requested: Optional[int] = None   # a signal number: stop after the current iteration
        # Called as on_step(trainer, iteration, loss) after every iteration (gs-train --viewer sets it).
        self.on_step: Optional[Callable] = None

    # -- checkpoints ------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "version": CHECKPOINT_VERSION,
            "iteration": self.iteration,
            "model": self.model.state(),
            "optimizer": self.optimizer.state_dict(),
            "densify": self.strategy.state(),
            "camera_gen": self.camera_gen.get_state(),
            "gen": self.gen.get_state(),
            "camera_order": torch.tensor(self.camera_order, dtype=torch.int64),
            "train_cameras": [cam.image_name for cam in self.scene.train_cameras],
        }

    def load_state(self, state: dict) -> None:
        """Resume from ``state``; ValueError (one line) if it does not fit this config and scene."""
        problem = checkpoint_problem(state, self.cfg) or self.camera_problem(state)
        if problem:
            raise ValueError(problem)
        self.model = GaussianModel.from_state(state["model"], self.device)
        self.optimizer = make_optimizer(self.model, self.cfg.optim, self.extent, self.batch_size)
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.strategy.load_state(state["densify"], self.device)
        # Generator states must be CPU ByteTensors, also for a CUDA generator; a checkpoint loaded with
        # map_location="cuda" (as gs-train does on a GPU) brings them in on the GPU.
        self.camera_gen.set_state(state["camera_gen"].cpu())
        self.gen.set_state(state["gen"].cpu())
        self.camera_order = [int(i) for i in state["camera_order"].tolist()]
        self.iteration = int(state["iteration"])

    def camera_problem(self, state: dict) -> Optional[str]:
        """Why the checkpoint's training cameras are not this scene's (count, then names); None if they are."""
        names = [cam.image_name for cam in self.scene.train_cameras]
        saved = state.get("train_cameras")
        order = [int(i) for i in state["camera_order"].tolist()]
        if saved is not None:
            if len(saved) != len(names):
                return (f"it was trained on {len(saved)} training views, this scene has {len(names)} "
                        f"(another scene, or a different --eval split)")
            if list(saved) != names:
                first = next(i for i, (a, b) in enumerate(zip(saved, names)) if a != b)
                return (f"it was trained on other views (view {first} is {saved[first]!r} there, {names[first]!r} "
                        f"here): a checkpoint of another scene")
        elif any(not 0 <= i < len(names) for i in order):
            return f"its camera order refers to views this scene ({len(names)} training views) does not have"
        return None

    # -- one iteration ----------------------------------------------------------------------------
    def next_camera(self):
        """Random order without replacement, a fresh permutation per epoch."""
        if not self.camera_order:
            n = len(self.scene.train_cameras)
            self.camera_order = torch.randperm(n, generator=self.camera_gen).tolist()
        return self.scene.train_cameras[self.camera_order.pop()]

    def background(self) -> torch.Tensor:
        if self.cfg.optim.random_background:
            return torch.rand(3, device=self.device, generator=self.gen)
        return self.bg

    def render(self, camera, bg):
        r = self.cfg.run
        return render(self.model, camera, bg, atomics=r.atomics, balance_threshold=r.balance_threshold,
                      backend=r.backend)

    def resolve_batch_size(self, batch_size: int) -> int:
        """Views per step: ``--batch_size``, where 0 means one view per rank (1 on a single process)."""
        return batch_size or 1

    def step(self, iteration: int):
        """One full training iteration over a batch of views (``--batch_size``, losses averaged).
        Returns (loss, l1, image, camera): the batch's mean losses and the first view's image and camera,
        tensors left on device."""
        loss, l1, image, camera, outs = self.forward_backward(iteration)
        self.densify_and_step(iteration, outs)
        return loss, l1, image, camera

    def forward_backward(self, iteration: int):
        """Render the step's training views, their losses and gradients (no parameter changes yet).

        Returns (mean loss, mean l1, first image, first camera, [(raster output, width, height)] per view)
        with tensors left on device.
        """
        cfg = self.cfg
        set_position_lr(self.optimizer, self.position_lr(iteration) * self.lr_scale)
        self.model.update_sh_degree(iteration, cfg.model.sh_increase_interval)
        views = [(self.next_camera(), self.background()) for _ in range(self.batch_size)]
        return self.render_backward(views, iteration)

    def densify_and_step(self, iteration: int, outs) -> None:
        """Densification statistics (every view of the batch) and schedule, then the Adam step."""
        self.strategy.post_backward_batch(iteration, self.model, self.optimizer, outs, grad_scale=self.batch_size,
                                          white_background=self.cfg.model.white_background, generator=self.gen)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def render_backward(self, views, iteration: int):
        """Render each (camera, background) of the batch, backward its loss / B (one graph alive at a time).
        Returns (mean loss, mean l1, first image, first camera, [(out, width, height)] for densification)."""
        b = len(views)
        loss_sum = l1_sum = 0.0
        first, outs = None, []
        for camera, bg in views:
            out = self.render(camera, bg)
            image = out.image
            if getattr(camera, "alpha_mask", None) is not None:
                image = image * camera.alpha_mask
            loss, l1 = gaussian_splatting_loss(image, camera.image, self.cfg.optim.lambda_dssim)
            self.strategy.pre_backward(out)
            (loss if b == 1 else loss / b).backward()
            if self.device.type != "cuda":   # free on the CPU: stop before a NaN reaches the parameters
                self.check_finite(loss, iteration)
            loss_sum, l1_sum = loss_sum + loss.detach(), l1_sum + l1.detach()
            outs.append((out, camera.width, camera.height))
            if first is None:
                first = (image.detach(), camera)
        return loss_sum / b, l1_sum / b, first[0], first[1], outs

    def num_gaussians(self) -> int:
        """Gaussians of the whole model (the sharded trainer sums its shards)."""
        return self.model.num_gaussians

    def check_finite(self, loss: torch.Tensor, iteration: int) -> None:
        value = float(loss.detach())
        if not math.isfinite(value):
            where = self.last_checkpoint or "none (pass --checkpoint_iterations to keep some)"
            raise TrainingDiverged(
                f"the loss became {value} at iteration {iteration} ({self.model.num_gaussians} Gaussians): "
                f"training stopped, nothing further was saved. Last good checkpoint: {where}. "
                f"Lower the learning rates or check the input images.")

    # -- the loop ---------------------------------------------------------------------------------
    def train(self) -> dict:
        cfg, run = self.cfg, self.cfg.run
        total = cfg.optim.iterations
        save_at = set(run.save_iterations) | {total}
        test_at = set(run.test_iterations) | {total}
        ckpt_at = set(run.checkpoint_iterations)
        start = self.iteration + 1
        bar = tqdm(initial=start - 1, total=total, desc="training", disable=run.quiet, dynamic_ncols=True)
        ema = None
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        t_last, it_last = time.perf_counter(), start - 1
        results: dict = {}
        for iteration in range(start, total + 1):
            loss, l1, image, camera, outs = self.forward_backward(iteration)
            bad |= ~torch.isfinite(loss)
            ema = loss if ema is None else EMA_WEIGHT * loss + (1 - EMA_WEIGHT) * ema
            due = iteration in save_at or iteration in test_at or iteration in ckpt_at
            if iteration % run.log_interval == 0 or due or iteration == total:
                if bool(bad):    # CUDA: the NaN check rides on the logging sync
                    self.check_finite(torch.tensor(float("nan")), iteration)
                now = time.perf_counter()
                iter_ms = 1000.0 * (now - t_last) / max(iteration - it_last, 1)
                t_last, it_last = now, iteration
                train_psnr = float(image_metrics(image, camera.image)["PSNR"])
                n = self.num_gaussians()
                bar.set_postfix(loss=f"{float(ema):.4f}", psnr=f"{train_psnr:.2f}", gaussians=n)
                for tag, value in (("train/loss", float(loss)), ("train/l1", float(l1)),
                                   ("train/psnr", train_psnr), ("train/num_gaussians", n),
                                   ("train/iter_ms", iter_ms),
                                   # the same figures under the original trainer's tags, for its dashboards
                                   ("train_loss_patches/l1_loss", float(l1)),
                                   ("train_loss_patches/total_loss", float(loss)),
                                   ("iter_time", iter_ms), ("total_points", n)):
                    self.sink.scalar(tag, value, iteration)
            paused = time.perf_counter()
            if iteration in test_at:       # evaluate and save before densifying, as the original does
                results = self.evaluate(iteration)
            if iteration in save_at:
                path = self.sink.save_gaussians(self.model, iteration)
                log.info("[ITER %d] saved %d Gaussians to %s", iteration, self.num_gaussians(), path)
            pause = time.perf_counter() - paused
            self.densify_and_step(iteration, outs)
            self.iteration = iteration
            if self.on_step is not None:
                self.on_step(self, iteration, loss)
            del outs
            stopping = self.stop_requested is not None and iteration < total
            if iteration in ckpt_at or stopping:
                paused = time.perf_counter()
                path = self.sink.save_checkpoint(self.state(), iteration)
                self.last_checkpoint = str(path)
                log.info("[ITER %d] checkpoint %s", iteration, path)
                pause += time.perf_counter() - paused
            t_last += pause                # evaluation and saving are not iteration time, neither in
            exclude_from_rate(bar, pause)  # train/iter_ms nor in the progress bar's rate
            bar.update(1)
            if stopping:
                bar.close()
                raise TrainingInterrupted(iteration, self.last_checkpoint, self.stop_requested)
        bar.close()
        return results

    # -- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, iteration: int) -> dict:
        """Mean L1 / PSNR / SSIM on the test views and a few training views; logged and returned."""
        train = self.scene.train_cameras
        splits = {"test": list(self.scene.test_cameras),
                  "train": [train[i % len(train)] for i in range(5, 5 * (NUM_TRAIN_EVAL_VIEWS + 1), 5)]}
        results = {}
        histogram = getattr(self.sink, "histogram", None)
        if histogram is not None:   # the original's tag
            histogram("scene/opacity_histogram", self.model.opacities, iteration)
        for split, cams in splits.items():
            if not cams:
                continue
            sums = {"l1": 0.0, "psnr": 0.0, "ssim": 0.0}
            for index, cam in enumerate(cams):
                image = self.render(cam, self.bg).image.clamp(0.0, 1.0)
                if getattr(cam, "alpha_mask", None) is not None:
                    image = image * cam.alpha_mask
                m = image_metrics(image, cam.image)
                sums["l1"] += float((image - cam.image).abs().mean())
                sums["psnr"] += m["PSNR"]
                sums["ssim"] += m["SSIM"]
                if split == "test" and index < self.cfg.run.num_eval_images:
                    self.sink.image(f"eval_images/{cam.image_name}/render", image, iteration)
                    if iteration == min(set(self.cfg.run.test_iterations) | {self.cfg.optim.iterations}):
                        self.sink.image(f"eval_images/{cam.image_name}/gt", cam.image, iteration)
            means = {k: v / len(cams) for k, v in sums.items()}
            prefix = "eval" if split == "test" else "eval_train"
            for key, value in means.items():
                self.sink.scalar(f"{prefix}/{key}", value, iteration)
            for key in ("l1", "psnr"):   # the original's tags ("test/loss_viewpoint - psnr", ...)
                self.sink.scalar(f"{split}/loss_viewpoint - {key.replace('l1', 'l1_loss')}", means[key], iteration)
            log.info("[ITER %d] evaluating %s (%d views): L1 %.5f PSNR %.2f SSIM %.4f", iteration, split,
                     len(cams), means["l1"], means["psnr"], means["ssim"])
            results[split] = means
        return results


def exclude_from_rate(bar: tqdm, seconds: float) -> None:
    """Leave ``seconds`` (spent evaluating or saving) out of the bar's elapsed time and it/s rate."""
    if bar.disable or seconds <= 0:
        return
    bar.start_t += seconds
    bar.last_print_t += seconds
