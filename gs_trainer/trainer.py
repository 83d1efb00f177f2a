"""The training loop: pick a camera, render, loss, backward, densify, Adam step, evaluate, log, save.

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
from .optim import load_optimizer_state, make_optimizer, position_lr_schedule, set_position_lr
from .renderer import note_atomics, render

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
EMA_WEIGHT = 0.4          # the original's smoothing of the loss shown in the progress bar
NUM_TRAIN_EVAL_VIEWS = 5  # training views scored at each evaluation, as in the original (5, 10, ..., 25)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the message says where and which checkpoint is the last good one."""


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
        self.optimizer = make_optimizer(self.model, cfg.optim, self.extent)
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
        note_atomics(self.device, cfg.run.atomics)
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
        }

    def load_state(self, state: dict) -> None:
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}")
        self.model = GaussianModel.from_state(state["model"], self.device)
        self.optimizer = make_optimizer(self.model, self.cfg.optim, self.extent)
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.strategy.load_state(state["densify"], self.device)
        # Generator states must be CPU ByteTensors, also for a CUDA generator; a checkpoint loaded with
        # map_location="cuda" (as gs-train does on a GPU) brings them in on the GPU.
        self.camera_gen.set_state(state["camera_gen"].cpu())
        self.gen.set_state(state["gen"].cpu())
        self.camera_order = [int(i) for i in state["camera_order"].tolist()]
        self.iteration = int(state["iteration"])

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
        return render(self.model, camera, bg, atomics=r.atomics, balance_threshold=r.balance_threshold)

    def step(self, iteration: int):
        """One full training iteration.  Returns (loss, l1, image, camera) with tensors left on device."""
        cfg = self.cfg
        set_position_lr(self.optimizer, self.position_lr(iteration))
        self.model.update_sh_degree(iteration, cfg.model.sh_increase_interval)
        camera = self.next_camera()
        out = self.render(camera, self.background())
        image = out.image
        if getattr(camera, "alpha_mask", None) is not None:
            image = image * camera.alpha_mask
        loss, l1 = gaussian_splatting_loss(image, camera.image, cfg.optim.lambda_dssim)
        self.strategy.pre_backward(out)
        loss.backward()
        if self.device.type != "cuda":   # free on the CPU: stop before a NaN reaches the parameters
            self.check_finite(loss, iteration)
        self.strategy.post_backward(iteration, self.model, self.optimizer, out, camera.width, camera.height,
                                    white_background=cfg.model.white_background, generator=self.gen)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), l1.detach(), image.detach(), camera

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
        bar = tqdm(range(start, total + 1), initial=start - 1, total=total, desc="training",
                   disable=run.quiet, dynamic_ncols=True)
        ema = None
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        t_last, it_last = time.perf_counter(), start - 1
        results: dict = {}
        for iteration in bar:
            loss, l1, image, camera = self.step(iteration)
            self.iteration = iteration
            if self.on_step is not None:
                self.on_step(self, iteration, loss)
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
                n = self.model.num_gaussians
                bar.set_postfix(loss=f"{float(ema):.4f}", psnr=f"{train_psnr:.2f}", gaussians=n)
                for tag, value in (("train/loss", float(loss)), ("train/l1", float(l1)),
                                   ("train/psnr", train_psnr), ("train/num_gaussians", n),
                                   ("train/iter_ms", iter_ms)):
                    self.sink.scalar(tag, value, iteration)
            if iteration in test_at:
                results = self.evaluate(iteration)
                t_last = time.perf_counter()   # evaluation time is not iteration time
            if iteration in save_at:
                path = self.sink.save_gaussians(self.model, iteration)
                log.info("[ITER %d] saved %d Gaussians to %s", iteration, self.model.num_gaussians, path)
            if iteration in ckpt_at:
                path = self.sink.save_checkpoint(self.state(), iteration)
                self.last_checkpoint = str(path)
                log.info("[ITER %d] checkpoint %s", iteration, path)
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
            log.info("[ITER %d] evaluating %s (%d views): L1 %.5f PSNR %.2f SSIM %.4f", iteration, split,
                     len(cams), means["l1"], means["psnr"], means["ssim"])
            results[split] = means
        return results
