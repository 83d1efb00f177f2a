"""Adaptive density control of 3DGS: clone, split, prune, opacity reset, and the statistics behind them.

The strategy is a dataclass with two hooks the training loop calls around ``backward``:

* ``pre_backward(out)``: keep the gradient of the rasterizer's 2D means;
* ``post_backward(iteration, model, optimizer, out, ...)``: accumulate the statistics and, on schedule,
  densify / prune / reset opacities (before the optimizer step, as in the original: the rows it creates
  or changes get no Adam update in that iteration).

The statistic is the norm of the loss gradient w.r.t. each Gaussian's 2D mean in NDC units (the
pixel-space gradient times (W/2, H/2)), averaged over the iterations in which the Gaussian was visible
(radius > 0).  Accumulation uses masked arithmetic, never boolean indexing, so it does not sync the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from cuda_rasterizer import RasterOutput

from .config import DensifyConfig
from .model import GaussianModel, build_rotation, inverse_sigmoid
from .optim import append_rows, keep_rows, reset_param

OPACITY_RESET_CEILING = 0.01   # the original resets opacities to min(opacity, 0.01)
SPLIT_CHILDREN = 2


@dataclass
class DensifyStrategy:
    """The 3DGS strategy.  ``extent`` is the scene's camera extent (radius of the camera centres)."""

    cfg: DensifyConfig
    extent: float
    grad_accum: Optional[torch.Tensor] = field(default=None, repr=False)   # [N] sum of NDC grad norms
    denom: Optional[torch.Tensor] = field(default=None, repr=False)        # [N] visible iterations
    max_radii: Optional[torch.Tensor] = field(default=None, repr=False)    # [N] max screen radius (px)

    def reset_stats(self, n: int, device) -> None:
        self.grad_accum = torch.zeros(n, device=device)
        self.denom = torch.zeros(n, device=device)
        self.max_radii = torch.zeros(n, device=device)

    # -- hooks ------------------------------------------------------------------------------------
    @staticmethod
    def pre_backward(out: RasterOutput) -> None:
        if out.means2d.requires_grad:
            out.means2d.retain_grad()

    def post_backward(self, iteration: int, model: GaussianModel, optimizer: torch.optim.Optimizer,
                      out: RasterOutput, width: int, height: int, *, white_background: bool = False,
                      generator: Optional[torch.Generator] = None) -> dict[str, int]:
        """Statistics, then densify/prune and opacity reset when due.  Returns what changed (counts)."""
        return self.post_backward_batch(iteration, model, optimizer, [(out, width, height)],
                                        white_background=white_background, generator=generator)

    def post_backward_batch(self, iteration: int, model: GaussianModel, optimizer: torch.optim.Optimizer,
                            views: list, *, grad_scale: float = 1.0, white_background: bool = False,
                            generator: Optional[torch.Generator] = None) -> dict[str, int]:
        """``post_backward`` for a batch: ``views`` is [(out, width, height)], one per view rendered in
        this step.  Each view adds its statistics as a single step would; ``grad_scale`` undoes the loss
        averaging (the batch loss is the mean of B view losses, so each view's 2D-mean gradient is 1/B of
        its single-step value: pass B).  Densification then runs at most once, after the whole batch."""
        cfg = self.cfg
        events: dict[str, int] = {}
        if iteration >= cfg.densify_until_iter:
            if iteration % cfg.densification_interval == 0:
                events.update(self.prune_larger_than_scene(model, optimizer))
            return events
        if self.grad_accum is None or self.grad_accum.shape[0] != model.num_gaussians:
            self.reset_stats(model.num_gaussians, model.device)
        for out, width, height in views:
            self.add_stats(out, width, height, grad_scale=grad_scale)
        if iteration % cfg.densification_interval == 0:
            if iteration > cfg.densify_from_iter:
                events.update(self.densify_and_prune(model, optimizer,
                                                     prune_big=iteration > cfg.opacity_reset_interval,
                                                     generator=generator))
            else:
                events.update(self.prune_larger_than_scene(model, optimizer))
        if iteration % cfg.opacity_reset_interval == 0 or (white_background and iteration == cfg.densify_from_iter):
            self.reset_opacity(model, optimizer)
            events["opacity_reset"] = 1
        return events

    # -- statistics -------------------------------------------------------------------------------
    @torch.no_grad()
    def add_stats(self, out: RasterOutput, width: int, height: int, grad_scale: float = 1.0) -> None:
        grad = out.means2d.grad
        if grad is None:
            raise RuntimeError("densify: means2d has no gradient; call pre_backward(out) before backward()")
        if grad_scale != 1.0:
            grad = grad * grad_scale
        visible = (out.radii > 0).to(self.grad_accum.dtype)
        ndc_norm = torch.hypot(grad[:, 0] * (width * 0.5), grad[:, 1] * (height * 0.5))
        self.grad_accum += ndc_norm * visible
        self.denom += visible
        self.max_radii = torch.maximum(self.max_radii, out.radii.to(self.max_radii.dtype))

    def mean_grads(self) -> torch.Tensor:
        grads = self.grad_accum / self.denom
        return torch.nan_to_num(grads, nan=0.0, posinf=0.0, neginf=0.0)

    # -- the operations ---------------------------------------------------------------------------
    @torch.no_grad()
    def densify_and_prune(self, model: GaussianModel, optimizer: torch.optim.Optimizer, *, prune_big: bool,
                          generator: Optional[torch.Generator] = None) -> dict[str, int]:
        """Clone small / split large high-gradient Gaussians, then prune (split parents, transparent, larger
        than the scene, and with ``prune_big`` those too big on screen or in the world).  Resets the
        statistics."""
        cfg = self.cfg
        n = model.num_gaussians
        grads = self.mean_grads()
        scales = model.scales
        max_scale = scales.max(dim=1).values
        size_limit = cfg.percent_dense * self.extent
        high = grads >= cfg.densify_grad_threshold
        clone = high & (max_scale <= size_limit)
        split = high & (max_scale > size_limit)

        params = model.param_dict()
        new_rows = {name: [p.detach()[clone]] for name, p in params.items()}
        n_split = int(split.sum())
        stds = scales[split].repeat(SPLIT_CHILDREN, 1)
        noise = self.split_noise(n_split, stds, generator)
        if n_split:
            samples = noise * stds
            rots = build_rotation(model.quats[split]).repeat(SPLIT_CHILDREN, 1, 1)
            children = {
                "means": torch.bmm(rots, samples[..., None])[..., 0] + model.means[split].repeat(SPLIT_CHILDREN, 1),
                "log_scales": torch.log(stds / cfg.split_factor),
            }
            for name, p in params.items():
                rows = children.get(name)
                if rows is None:
                    rows = p.detach()[split].repeat((SPLIT_CHILDREN,) + (1,) * (p.dim() - 1))
                new_rows[name].append(rows)
        extra = {name: torch.cat(rows, dim=0) for name, rows in new_rows.items()}
        n_clone = int(clone.sum())
        if n_clone + n_split:
            append_rows(optimizer, model, extra)

        n_total = model.num_gaussians
        n_added = n_total - n
        prune = torch.cat([split, torch.zeros(n_added, dtype=torch.bool, device=split.device)])
        transparent = (model.opacities < cfg.min_opacity).reshape(-1)
        prune |= transparent
        prune |= self.larger_than_scene(model)
        if prune_big:
            big_world = model.scales.max(dim=1).values > cfg.max_world_size * self.extent
            prune |= big_world
            if cfg.max_screen_size > 0:
                radii = torch.cat([self.max_radii, torch.zeros(n_added, device=self.max_radii.device)])
                prune |= radii > cfg.max_screen_size
        n_pruned = int(prune.sum()) - n_split
        # rows before pruning: [old n | clones | first split children | second split children]; the sharded
        # strategy reads this to put every kept row back at its single-process position
        self.last_layout = ((n, n_clone, n_split, n_split), ~prune)
        if bool(prune.any()):
            keep_rows(optimizer, model, ~prune)
        self.reset_stats(model.num_gaussians, model.device)
        return {"cloned": n_clone, "split": n_split, "pruned": n_pruned}

    def larger_than_scene(self, model: GaussianModel) -> torch.Tensor:
        """[N] bool: largest world scale above ``scene_size_limit`` extents (all False when the limit is 0)."""
        limit = self.cfg.scene_size_limit
        if limit <= 0:
            return torch.zeros(model.num_gaussians, dtype=torch.bool, device=model.device)
        return model.scales.max(dim=1).values > limit * self.extent

    @torch.no_grad()
    def prune_larger_than_scene(self, model: GaussianModel, optimizer: torch.optim.Optimizer) -> dict[str, int]:
        """Outside the densification steps (before densify_from_iter, after densify_until_iter) the one
        pruning rule that stays on: no Gaussian larger than the scene survives (a floater that veils views)."""
        huge = self.larger_than_scene(model)
        n_huge = int(huge.sum())
        if n_huge == 0:
            return {}
        keep = ~huge
        keep_rows(optimizer, model, keep)
        if self.grad_accum is not None and self.grad_accum.shape[0] == keep.shape[0]:
            self.grad_accum, self.denom, self.max_radii = (t[keep] for t in (self.grad_accum, self.denom,
                                                                                 self.max_radii))
        else:
            self.reset_stats(model.num_gaussians, model.device)
        return {"pruned": n_huge}

    def split_noise(self, n_split: int, stds: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Standard normal offsets of the split children, [SPLIT_CHILDREN * n_split, 3] (children of the
        first copy of every split Gaussian, then of the second).  The sharded strategy overrides this to
        draw the whole model's noise and keep its shard's rows, so that sharding changes no sample."""
        if not n_split:
            return stds
        return torch.randn(stds.shape, device=stds.device, dtype=stds.dtype, generator=generator)

    @torch.no_grad()
    def reset_opacity(self, model: GaussianModel, optimizer: torch.optim.Optimizer) -> None:
        ceiling = torch.full_like(model.opacities, OPACITY_RESET_CEILING)
        reset_param(optimizer, model, "opacity_logits", inverse_sigmoid(torch.minimum(model.opacities, ceiling)))

    # -- checkpoint state -------------------------------------------------------------------------
    def state(self) -> dict:
        return {"grad_accum": self.grad_accum, "denom": self.denom, "max_radii": self.max_radii}

    def load_state(self, state: dict, device) -> None:
        for key in ("grad_accum", "denom", "max_radii"):
            value = state.get(key)
            setattr(self, key, None if value is None else value.to(device))
