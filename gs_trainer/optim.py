"""Adam with one parameter group per Gaussian attribute, the position learning-rate schedule, and the
surgery that keeps Adam's per-row state aligned when densification appends, removes or resets rows.

Every group holds exactly one parameter and is named after it (``group["name"]``), so the surgery can
find a parameter's state by name.  Usable without the Trainer (the benchmark builds its own).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .config import OptimConfig
from .model import PARAM_NAMES, GaussianModel

ADAM_EPS = 1e-15          # the original's epsilon: per-row gradients can be tiny
SH_REST_LR_DIVISOR = 20.0


def exponential_lr(lr_init: float, lr_final: float, delay_steps: int = 0, delay_mult: float = 1.0,
                   max_steps: int = 1_000_000) -> Callable[[int], float]:
    """Log-linear decay from lr_init (step 0) to lr_final (max_steps), with an optional warm-up that
    scales the rate by a cosine ease from delay_mult to 1 over the first delay_steps (the original's
    schedule; the original trainer uses no delay steps, so delay_mult has no effect there either)."""

    def schedule(step: int) -> float:
        if step < 0 or (lr_init == 0.0 and lr_final == 0.0):
            return 0.0
        if delay_steps > 0:
            delay_rate = delay_mult + (1 - delay_mult) * math.sin(0.5 * math.pi * min(max(step / delay_steps, 0), 1))
        else:
            delay_rate = 1.0
        t = min(max(step / max_steps, 0.0), 1.0)
        return delay_rate * math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)

    return schedule


def learning_rates(cfg: OptimConfig, spatial_lr_scale: float) -> dict[str, float]:
    """Initial learning rate per parameter name."""
    return {
        "means": cfg.position_lr_init * spatial_lr_scale,
        "sh_dc": cfg.feature_lr,
        "sh_rest": cfg.feature_lr / SH_REST_LR_DIVISOR,
        "opacity_logits": cfg.opacity_lr,
        "log_scales": cfg.scaling_lr,
        "quats": cfg.rotation_lr,
    }


def position_lr_schedule(cfg: OptimConfig, spatial_lr_scale: float) -> Callable[[int], float]:
    return exponential_lr(cfg.position_lr_init * spatial_lr_scale, cfg.position_lr_final * spatial_lr_scale,
                          delay_mult=cfg.position_lr_delay_mult, max_steps=cfg.position_lr_max_steps)


ADAM_BETAS = (0.9, 0.999)   # torch's defaults, the original's


def batch_scaling(batch_size: int) -> tuple[float, tuple[float, float]]:
    """(learning-rate factor, Adam betas) for a batch of B views per step: Grendel-GS's rule
    (Zhao et al., "On Scaling Up 3D Gaussian Splatting Training", arXiv 2406.18533, ICLR 2025).

    If the B views' gradients are independent, one batched step should move the parameters as far as B
    single steps would: Adam's second-moment normalisation makes a step's size independent of the
    gradient's scale, and B independent gradients add up to sqrt(B) times one gradient's length, so the
    learning rate grows by sqrt(B); one batched step stands for B steps of momentum decay, so the betas
    become beta^B.  B = 1 gives (1.0, ADAM_BETAS) exactly."""
    b = int(batch_size)
    if b < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if b == 1:
        return 1.0, ADAM_BETAS
    return math.sqrt(b), (ADAM_BETAS[0] ** b, ADAM_BETAS[1] ** b)


def make_optimizer(model: GaussianModel, cfg: OptimConfig, spatial_lr_scale: float,
                   batch_size: int = 1) -> torch.optim.Adam:
    """Adam (fused: one kernel per parameter, on CUDA and on the CPU) with the 3DGS learning rate per
    parameter group, scaled for ``batch_size`` views per step (``batch_scaling``)."""
    lr_scale, betas = batch_scaling(batch_size)
    lrs = learning_rates(cfg, spatial_lr_scale)
    groups = [{"params": [getattr(model, name)], "lr": lrs[name] * lr_scale, "name": name}
              for name in PARAM_NAMES]
    fused = model.device.type in ("cuda", "cpu")   # CPU: 0.3 ms a step against 0.9 for the for-loop form
    return torch.optim.Adam(groups, lr=0.0, betas=betas, eps=ADAM_EPS, fused=fused or None)


# Settings that say how Adam runs on this device, not what it has learnt: a checkpoint keeps its own.
_IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state_dict: dict) -> None:
    """``optimizer.load_state_dict`` that keeps this optimizer's implementation (fused Adam on CUDA).

    The plain call takes ``fused``/``foreach`` from the saved groups, so a checkpoint written on the CPU
    would silently turn fused Adam off when resumed on a GPU; torch also casts the ``step`` tensors by
    the saved groups' flags (float32 on the parameter's device only for fused/capturable), so the
    flags are set before loading, not after.
    """
    groups = []
    for saved, current in zip(state_dict["param_groups"], optimizer.param_groups):
        groups.append({**saved, **{k: current[k] for k in _IMPLEMENTATION_KEYS if k in current}})
    optimizer.load_state_dict({**state_dict, "param_groups": groups})


def set_position_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if group["name"] == "means":
            group["lr"] = lr


# -- surgery --------------------------------------------------------------------------------------
_ROW_STATE = ("exp_avg", "exp_avg_sq")


def _replace(optimizer: torch.optim.Optimizer, model: GaussianModel,
             new_param: Callable[[str, torch.Tensor], torch.Tensor],
             new_state: Callable[[str, torch.Tensor], torch.Tensor], names=PARAM_NAMES) -> None:
    """For each named group: build the new parameter and its per-row Adam state, swap both in."""
    for group in optimizer.param_groups:
        name = group["name"]
        if name not in names:
            continue
        (old,) = group["params"]
        param = nn.Parameter(new_param(name, old.detach()))
        state = optimizer.state.pop(old, None)
        if state:
            for key in _ROW_STATE:
                if key in state:
                    state[key] = new_state(name, state[key])
            optimizer.state[param] = state
        group["params"][0] = param
        model.set_params({name: param})


def append_rows(optimizer: torch.optim.Optimizer, model: GaussianModel,
                extra: dict[str, torch.Tensor]) -> None:
    """Append rows to every parameter (``extra[name]`` has the new rows); their Adam moments start at 0."""
    _replace(optimizer, model,
             lambda name, old: torch.cat([old, extra[name].to(old)], dim=0),
             lambda name, s: torch.cat([s, torch.zeros((extra[name].shape[0],) + s.shape[1:], dtype=s.dtype,
                                                       device=s.device)], dim=0))


def keep_rows(optimizer: torch.optim.Optimizer, model: GaussianModel, keep: torch.Tensor) -> None:
    """Keep the rows where the bool mask ``keep`` [N] is true, in parameters and Adam state alike."""
    _replace(optimizer, model, lambda name, old: old[keep], lambda name, s: s[keep])


def reset_param(optimizer: torch.optim.Optimizer, model: GaussianModel, name: str, value: torch.Tensor) -> None:
    """Replace one parameter's values (same shape) and zero its Adam moments (the opacity reset)."""
    _replace(optimizer, model, lambda _n, old: value.to(old), lambda _n, s: torch.zeros_like(s), names=(name,))


def check_aligned(optimizer: torch.optim.Optimizer, model: GaussianModel) -> None:
    """Raise AssertionError unless each group's parameter is the model's and its state rows match."""
    for group in optimizer.param_groups:
        (p,) = group["params"]
        assert p is getattr(model, group["name"]), f"optimizer group {group['name']} holds a stale parameter"
        for key in _ROW_STATE:
            s = optimizer.state.get(p, {}).get(key)
            assert s is None or s.shape == p.shape, f"{group['name']}.{key}: {list(s.shape)} vs {list(p.shape)}"

