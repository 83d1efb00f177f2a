"""What gs-bench measures for one gradient-accumulation policy.

Per policy: the backward render kernel alone (through ``cuda_rasterizer.profiling.BackwardRenderProbe``,
CUDA only), the whole backward of the rasterizer (autograd, from a fixed image cotangent), the forward, and
a full training iteration (render, 3DGS loss, backward, Adam step), each the median of CUDA-event-timed
repeats after warm-up; the peak GPU memory of the forward+backward and of the training iteration.
On the CPU the same figures (less the kernel) are taken per backend: the C++ CPU backend (row "cpu") and
the PyTorch reference (row "reference"), with the process's peak resident memory after each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from cuda_rasterizer import ATOMICS_MODES, DEFAULT_BALANCE_THRESHOLD, rasterize_gaussians

from .scene import BenchScene, background
from .timing import peak_memory_mib, process_peak_rss_mib, reset_peak_memory, time_op

log = logging.getLogger(__name__)

#: Name of the no-atomics floor in the probe (gradient writes dropped: wrong results, benchmark only).
FLOOR = "floor"
#: Spatial learning-rate scale of the synthetic scene's optimizer (roughly its extent); timing ignores it.
SYNTH_SPATIAL_LR_SCALE = 5.0


@dataclass(frozen=True)
class Policy:
    name: str           # row label: "baseline", "warp", "distwar@8", "tile", "floor", "reference"
    atomics: str        # the rasterizer's atomics mode ("floor" for the probe only)
    threshold: int = DEFAULT_BALANCE_THRESHOLD
    backend: str = ""   # the rasterizer backend; "" = the bench's (cuda on a GPU, reference on the CPU)


def expand_policies(atomics: list, thresholds: list) -> list:
    """One Policy per mode, distwar once per balance threshold."""
    out = []
    for mode in atomics:
        if mode == "distwar":
            out.extend(Policy(f"distwar@{t}", "distwar", int(t)) for t in thresholds)
        else:
            out.append(Policy(mode, mode))
    return out


def _grad_rel_diff(a: dict, b: dict) -> float:
    """max over keys of max|a - b| / max|b|: how far a policy's gradients are from baseline's."""
    worst = 0.0
    for key, ref in b.items():
        if key not in a:
            continue
        scale = float(ref.abs().max()) or 1.0
        worst = max(worst, float((a[key].float() - ref.float()).abs().max()) / scale)
    return worst


class PolicyBench:
    """Holds one scene's inputs on the device and times each policy on them."""

    def __init__(self, scene: BenchScene, *, warmup: int, repeats: int, train_repeats: Optional[int] = None,
                 seed: int = 0, with_probe: bool = True):
        self.scene = scene
        self.device = scene.device
        self.warmup, self.repeats = warmup, repeats
        self.train_repeats = train_repeats or repeats
        self.backend = "cuda" if self.device.type == "cuda" else "reference"
        h, w = scene.settings.image_height, scene.settings.image_width
        g = torch.Generator(device=self.device).manual_seed(int(seed) + 1)
        # A fixed cotangent of the image, the size of an L1 loss gradient (sign / (3 H W)).
        self.grad_image = torch.randn(3, h, w, generator=g, device=self.device) / (3.0 * h * w)
        target = getattr(scene.camera, "image", None)
        if target is None or tuple(target.shape) != (3, h, w):
            target = torch.rand(3, h, w, generator=g, device=self.device)
        self.target = target.to(self.device)
        self.inputs = scene.activated(requires_grad=True)
        self.probe, self.probe_note = (None, "CPU: no kernel to time")
        if self.device.type == "cuda" and with_probe:
            self.probe, self.probe_note = self._make_probe()
        self._baseline_grads = None

    # -- the probe of the backward render kernel ------------------------------------------------------
    def _make_probe(self):
        try:
            from cuda_rasterizer.profiling import BackwardRenderProbe
        except ImportError as err:
            return None, f"cuda_rasterizer.profiling unavailable ({err}): kernel-only timings skipped"
        means, scales, rots, opac, shs = (t.detach() for t in self.inputs)
        try:
            return BackwardRenderProbe(means, scales, rots, opac, shs, None, self.scene.settings), None
        except Exception as err:  # noqa: BLE001 - reported in the results, the rest still runs
            log.exception("BackwardRenderProbe failed")
            return None, f"BackwardRenderProbe failed: {err}"

    def kernel(self, policy: Policy) -> dict:
        """Backward render kernel alone; also how far its gradients are from baseline's."""
        if self.probe is None:
            return {}
        call = lambda _: self.probe.backward_render(self.grad_image, policy.atomics, policy.threshold)  # noqa: E731
        grads = call(None)
        # the probe's gradient buffers are zeroed in time_op's setup, outside the CUDA events: kernel only
        zero = getattr(self.probe, "zero_grads", None)
        out = {"kernel": time_op(call, self.device, warmup=self.warmup, repeats=self.repeats, setup=zero)}
        if policy.atomics == "baseline":
            self._baseline_grads = {k: v.detach().clone() for k, v in grads.items()}
        elif self._baseline_grads is not None and policy.atomics != FLOOR:
            out["grad_rel_diff_vs_baseline"] = _grad_rel_diff(grads, self._baseline_grads)
        return out

    def lane_histogram_cuda(self) -> Optional[torch.Tensor]:
        if self.probe is None:
            return None
        return self.probe.lane_histogram().cpu().to(torch.int64)

    # -- the rasterizer through autograd -----------------------------------------------------------
    def _render(self, policy: Policy):
        means, scales, rots, opac, shs = self.inputs
        return rasterize_gaussians(means, scales, rots, opac, shs, settings=self.scene.settings,
                                   atomics=policy.atomics if policy.atomics in ATOMICS_MODES else "distwar",
                                   balance_threshold=policy.threshold, backend=policy.backend or self.backend)

    def _clear_grads(self) -> None:
        for t in self.inputs:
            t.grad = None

    def forward_backward(self, policy: Policy) -> dict:
        reset_peak_memory(self.device)

        def fwd(_):
            return self._render(policy)

        forward = time_op(fwd, self.device, warmup=self.warmup, repeats=self.repeats)

        def setup():
            self._clear_grads()
            return self._render(policy).image

        def bwd(image):
            torch.autograd.backward(image, self.grad_image)

        backward = time_op(bwd, self.device, warmup=self.warmup, repeats=self.repeats, setup=setup)
        self._clear_grads()
        return {"forward": forward, "backward": backward, "peak_mem_fwd_bwd_mib": peak_memory_mib(self.device)}

    def train_iteration(self, policy: Policy, lambda_dssim: float = 0.2) -> dict:
        """Render, 3DGS loss, backward, Adam step (the trainer's own pieces), from a fresh copy of the model."""
        try:
            from ..config import OptimConfig
            from ..losses import gaussian_splatting_loss
            from ..optim import make_optimizer
            from ..renderer import render
        except ImportError as err:
            return {"train_note": f"training pieces unavailable ({err}): iteration not timed"}
        model = self.scene.model()
        optimizer = make_optimizer(model, OptimConfig(), self.scene.source.get("scene_extent", SYNTH_SPATIAL_LR_SCALE))
        bg = background(self.device)
        atomics = policy.atomics if policy.atomics in ATOMICS_MODES else "distwar"
        backend = policy.backend or self.backend

        def step(_):
            out = render(model, self.scene.camera, bg, atomics=atomics, balance_threshold=policy.threshold,
                         backend=backend)
            if out.means2d.requires_grad:      # the trainer reads its gradient for densification
                out.means2d.retain_grad()
            loss, _ = gaussian_splatting_loss(out.image, self.target, lambda_dssim)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        reset_peak_memory(self.device)
        timing = time_op(step, self.device, warmup=self.warmup, repeats=self.train_repeats)
        peak = peak_memory_mib(self.device)
        return {"train_iter": timing, "peak_mem_train_mib": peak}

    def measure(self, policy: Policy, *, kernel_only: bool = False) -> dict:
        """Every figure of one policy as a flat row; an error is recorded in the row, not raised."""
        row = {"policy": policy.name, "atomics": policy.atomics,
               "balance_threshold": policy.threshold if policy.atomics == "distwar" else None}
        parts = [self.kernel] if kernel_only else [self.kernel, self.forward_backward, self.train_iteration]
        for part in parts:
            try:
                for key, value in part(policy).items():
                    if hasattr(value, "median_ms"):
                        row[f"{key}_ms"] = value.median_ms
                        row[f"{key}_timing"] = value.to_dict()
                    else:
                        row[key] = value
            except Exception as err:  # noqa: BLE001 - one broken policy must not hide the others
                log.exception("%s: %s failed", policy.name, part.__name__)
                row.setdefault("errors", []).append(f"{part.__name__}: {type(err).__name__}: {err}")
        if self.device.type != "cuda":
            # monotonic: a row measured after another peaked higher only if its figure is higher
            row["process_peak_rss_mib"] = round(process_peak_rss_mib(), 1)
        return row


def add_ratios(rows: list) -> None:
    """speedup_<metric> = baseline / policy (same run; on the CPU: reference / policy), and kernel_vs_floor =
    policy kernel / floor kernel."""
    by_name = {r["policy"]: r for r in rows}
    base = by_name.get("baseline") or by_name.get("reference") or {}
    floor = by_name.get(FLOOR, {})
    for r in rows:
        for metric in ("kernel", "backward", "forward", "train_iter"):
            mine, ref = r.get(f"{metric}_ms"), base.get(f"{metric}_ms")
            if mine and ref:
                r[f"speedup_{metric}"] = ref / mine
        if r.get("kernel_ms") and floor.get("kernel_ms"):
            r["kernel_vs_floor"] = r["kernel_ms"] / floor["kernel_ms"]
