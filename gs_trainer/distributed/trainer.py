"""The sharded trainer: a Trainer whose model is this rank's shard of the Gaussians.

One step with N ranks and a batch of B views (view c is rendered by rank c % N):

1. every rank projects its shard for each of the B cameras (project_gaussians);
2. the visible rows (radius > 0) of camera c go to rank c % N, in one all_to_all for the whole batch;
   the receiver concatenates them in rank order, which is the single-process row order;
3. each rank rasterizes its cameras (rasterize_projected), and backpropagates sum(loss_c) / B; the
   backward of the exchange sends each row's 2D gradient back to its owner, whose projection turns it
   into gradients of its own parameters;
4. densification statistics are added per view on each shard (the owner has every view's 2D gradients
   of its rows); densification decides per row, draws the split noise of the whole model and keeps its
   rows, then moves rows so that shards stay contiguous, in single-process order and even in size;
5. each rank steps Adam on its own rows.

Rank 0 alone writes the run folder; PLY files and checkpoints are gathered there in the single-process
layout, so a run can resume with any number of ranks (or none).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from cuda_rasterizer import ProjectedGaussians, RasterOutput, project_gaussians, rasterize_projected

from ..densify import SPLIT_CHILDREN, DensifyStrategy
from ..losses import gaussian_splatting_loss
from ..model import PARAM_NAMES, GaussianModel
from ..trainer import Trainer
from .comm import Comm, all_gather_ints, all_reduce_sum, exchange_rows, gather_rows
from .shard import ROW_STATE, full_state, gather_fields, pack, repartition, row_fields, shard_bounds, slice_state, unpack

log = logging.getLogger(__name__)

#: Columns of one exchanged row: means2d (2), conics (3), colors (3), opacity, depth, radius, tiles touched.
ROW_COLUMNS = 12


def _rows_of(proj: ProjectedGaussians, index: torch.Tensor) -> torch.Tensor:
    """[n, ROW_COLUMNS] float32 rows of the Gaussians ``index``; the integer columns are exact below 2^24."""
    cols = [proj.means2d, proj.conics, proj.colors, proj.opacities[:, None], proj.depths[:, None],
            proj.radii.to(torch.float32)[:, None], proj.tiles_touched.to(torch.float32)[:, None]]
    return torch.cat([c[index].to(torch.float32) for c in cols], dim=1)


def _projected_of(rows: torch.Tensor) -> ProjectedGaussians:
    return ProjectedGaussians(rows[:, 0:2], rows[:, 2:5], rows[:, 5:8], rows[:, 8], rows[:, 9],
                              rows[:, 10].to(torch.int32), rows[:, 11].to(torch.int32))


def _swap_rows(model: GaussianModel, optimizer: torch.optim.Optimizer, fields: dict[str, torch.Tensor]) -> None:
    """Replace every parameter and its Adam moments by the rows in ``fields`` (keys of shard.row_fields)."""
    for group in optimizer.param_groups:
        name = group["name"]
        (old,) = group["params"]
        param = nn.Parameter(fields[name].to(old.dtype).contiguous())
        state = optimizer.state.pop(old, None)
        if state:
            for key in ROW_STATE:
                if key in state:
                    state[key] = fields[f"{name}.{key}"].to(state[key].dtype).contiguous()
            optimizer.state[param] = state
        group["params"][0] = param
        model.set_params({name: param})


def view_models(model: GaussianModel, b: int) -> list[GaussianModel]:
    """``b`` models whose leaf parameters alias ``model``'s storage (no copy), one per view of the batch.

    Each view projects from its own leaves, so that its parameter gradients come out of its own activation
    graph (exp, sigmoid, normalize, cat), as they do in a single process, which backpropagates one view at a
    time.  Projecting every view from the shared activations instead would sum the B views' gradients
    before the activations' chain rule, i.e. compute exp(x) * (g1 + g2) where a single process computes
    exp(x) * g1 + exp(x) * g2: different rounding in every element (see ``accumulate_view_grads``)."""
    params = {k: v.detach() for k, v in model.param_dict().items()}
    return [GaussianModel(**params, max_sh_degree=model.max_sh_degree, active_sh_degree=model.active_sh_degree)
            for _ in range(b)]


@torch.no_grad()
def accumulate_view_grads(model: GaussianModel, views: Optional[list[GaussianModel]]) -> None:
    """Add the per-view leaf gradients to ``model``'s, in view order, as autograd accumulates them in a
    single process (grad = g_1, then grad += g_2, ...).  One backward over the whole batch would let the
    autograd engine add them in its own order, which is not view order for B > 2 (float addition is not
    associative).  Frees the per-view gradients as it goes."""
    if not views:
        return
    for name, param in model.param_dict().items():
        for view in views:
            leaf = getattr(view, name)
            grad, leaf.grad = leaf.grad, None
            if grad is None:
                continue
            if param.grad is None:
                param.grad = grad
            else:
                param.grad += grad


@dataclass
class ShardedDensifyStrategy(DensifyStrategy):
    """The 3DGS strategy on one shard, deciding exactly as the single-process strategy on the same rows."""

    comm: Optional[Comm] = field(default=None, repr=False)

    def split_noise(self, n_split, stds, generator):
        comm = self.comm
        counts = all_gather_ints(comm, [n_split])[:, 0].tolist()
        total, offset = sum(counts), sum(counts[:comm.rank])
        if not total:
            return stds
        # the whole model's noise, as the single process draws it; this shard's rows of each copy
        noise = torch.randn((SPLIT_CHILDREN * total, stds.shape[1]), device=stds.device, dtype=stds.dtype,
                            generator=generator)
        return torch.cat([noise[c * total + offset: c * total + offset + n_split] for c in range(SPLIT_CHILDREN)])

    @torch.no_grad()
    def densify_and_prune(self, model, optimizer, *, prune_big, generator=None):
        events = super().densify_and_prune(model, optimizer, prune_big=prune_big, generator=generator)
        self.rebalance(model, optimizer)
        return events

    @torch.no_grad()
    def rebalance(self, model, optimizer) -> None:
        """Put every row at its single-process position and split the model evenly again.

        After a local densify + prune each shard holds [old | clones | children 1 | children 2] (kept rows);
        the single process holds each category of all ranks, in rank order, one category after the other."""
        comm = self.comm
        segments, keep = self.last_layout
        bounds = [0]
        for size in segments:
            bounds.append(bounds[-1] + size)
        kept = [int(keep[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:])]
        counts = all_gather_ints(comm, kept)                     # [world, categories]
        totals = counts.sum(0)
        starts = torch.cumsum(totals, 0) - totals                # first global position of each category
        before = counts[:comm.rank].sum(0)                        # rows of each category on lower ranks
        device = model.device
        positions = torch.cat([starts[k] + before[k] + torch.arange(kept[k]) for k in range(len(kept))])
        fields = {k: v for k, v in row_fields(model, optimizer, self).items() if not k.startswith("stat:")}
        rows, layout = pack(fields)
        new = repartition(comm, rows, positions.to(device), int(totals.sum()))
        _swap_rows(model, optimizer, unpack(new, layout))
        self.reset_stats(model.num_gaussians, device)


class ShardSink:
    """The run folder as the ranks see it: rank 0 writes (PLY and checkpoints gathered from every shard),
    the others write nothing.  Every rank must call the save methods (they gather)."""

    def __init__(self, sink, comm: Comm) -> None:
        self.sink = sink if comm.is_main else None
        self.comm = comm

    def save_gaussians(self, model: GaussianModel, iteration: int):
        fields = gather_fields(self.comm, {k: v.detach() for k, v in model.param_dict().items()})
        if self.sink is None:
            return None
        full = GaussianModel(**{k: fields[k] for k in PARAM_NAMES}, max_sh_degree=model.max_sh_degree,
                             active_sh_degree=model.active_sh_degree)
        return self.sink.save_gaussians(full, iteration)

    def save_checkpoint(self, state: Optional[dict], iteration: int):
        if self.sink is None:
            return None
        return self.sink.save_checkpoint(state, iteration)

    def scalar(self, tag, value, iteration) -> None:
        if self.sink is not None:
            self.sink.scalar(tag, value, iteration)

    def image(self, tag, image, iteration) -> None:
        if self.sink is not None:
            self.sink.image(tag, image, iteration)

    def close(self) -> None:
        if self.sink is not None and hasattr(self.sink, "close"):
            self.sink.close()

    def __getattr__(self, name):   # layout helpers of the wrapped sink (ply_path, ...), on rank 0
        sink = self.__dict__.get("sink")
        if sink is None:
            raise AttributeError(f"{name}: only rank 0 holds the run folder")
        return getattr(sink, name)


class DistributedTrainer(Trainer):
    """Trainer over a shard: same config, scene and sink; ``comm`` says which rank this is."""

    def __init__(self, cfg, scene, sink, comm: Comm, *, model: Optional[GaussianModel] = None) -> None:
        self.comm = comm
        if model is None:
            full = GaussianModel.from_points(scene.points, scene.colors, cfg.model.sh_degree, comm.device)
            start, end = shard_bounds(full.num_gaussians, comm.world)[comm.rank:comm.rank + 2]
            model = GaussianModel(**{k: v.detach()[start:end] for k, v in full.param_dict().items()},
                                  max_sh_degree=full.max_sh_degree, active_sh_degree=full.active_sh_degree)
            del full
        super().__init__(cfg, scene, ShardSink(sink, comm), device=comm.device, model=model)
        self.strategy = ShardedDensifyStrategy(cfg.densify, self.extent, comm=comm)
        self.strategy.reset_stats(self.model.num_gaussians, self.device)
        self.param_index = {group["name"]: i for i, group in enumerate(self.optimizer.param_groups)}
        #: this rank's exchange traffic, summed over steps (docs/SCALING.md, scripts/measure_exchange.py):
        #: visible rows it projected, rows it sent to other ranks, seconds in the forward all_to_all
        self.traffic = {"steps": 0, "visible_rows": 0, "rows_out": 0, "exchange_s": 0.0}
        #: per-view leaves of the step being backpropagated (view_models), None between steps
        self._views: Optional[list[GaussianModel]] = None

    def resolve_batch_size(self, batch_size: int) -> int:
        return batch_size or self.comm.world

    def num_gaussians(self) -> int:
        n = torch.tensor([self.model.num_gaussians], dtype=torch.int64, device=self.device)
        return int(all_reduce_sum(self.comm, n))

    # -- the exchange ---------------------------------------------------------------------------
    def settings(self, camera, bg):
        return camera.raster_settings(bg, sh_degree=self.model.active_sh_degree)

    def exchange(self, views, owners: list[int]):
        """Project this shard for every (camera, bg) of ``views``; send camera c's visible rows to rank
        ``owners[c]``.  Returns (projections of this shard [B], {c: ProjectedGaussians of the whole model
        for the cameras this rank renders}, the received rows)."""
        comm = self.comm
        backend = getattr(self.cfg.run, "backend", "auto")
        projs, sends = [], []
        self._views = view_models(self.model, len(views)) if torch.is_grad_enabled() else None
        for c, (camera, bg) in enumerate(views):
            m = self.model if self._views is None else self._views[c]
            proj = project_gaussians(m.means, m.scales, m.rotations, m.opacities, m.shs,
                                     settings=self.settings(camera, bg), backend=backend)
            projs.append(proj)
            sends.append(torch.nonzero(proj.radii > 0).squeeze(1))
        counts = all_gather_ints(comm, [int(s.numel()) for s in sends])     # [world, B] rows per camera
        order = sorted(range(len(views)), key=lambda c: (owners[c], c))    # send buffer: by rank, then camera
        send = torch.cat([_rows_of(projs[c], sends[c]) for c in order]) if order else \
            torch.zeros(0, ROW_COLUMNS, device=self.device)
        send_counts = [sum(int(counts[comm.rank, c]) for c in range(len(views)) if owners[c] == d)
                       for d in range(comm.world)]
        mine = [c for c in range(len(views)) if owners[c] == comm.rank]
        recv_counts = [sum(int(counts[s, c]) for c in mine) for s in range(comm.world)]
        started = time.perf_counter()
        recv = exchange_rows(comm, send, send_counts, recv_counts)
        if torch.is_grad_enabled():          # training steps only, not evaluation renders
            t = self.traffic
            t["steps"] += 1
            t["visible_rows"] += int(counts[comm.rank].sum())
            t["rows_out"] += sum(send_counts) - send_counts[comm.rank]
            t["exchange_s"] += time.perf_counter() - started
        pieces: dict[int, list] = {c: [] for c in mine}
        offset = 0
        for s in range(comm.world):            # from each source rank: its rows of my cameras, in order
            for c in mine:
                n = int(counts[s, c])
                pieces[c].append(recv[offset:offset + n])
                offset += n
        whole = {c: _projected_of(torch.cat(pieces[c])) for c in mine}
        return projs, whole, recv

    def render_backward(self, views, iteration: int):
        comm, b = self.comm, len(views)
        owners = [c % comm.world for c in range(b)]
        projs, whole, recv = self.exchange(views, owners)
        for proj in projs:
            if proj.means2d.requires_grad:
                proj.means2d.retain_grad()
        r = self.cfg.run
        # ties every rank's loss to the received rows, so that every rank runs the exchange's backward
        total = 0.0 * recv.sum()
        sums = torch.zeros(2, device=self.device)
        first = None
        for c, proj in whole.items():
            camera, bg = views[c]
            out = rasterize_projected(proj, settings=self.settings(camera, bg), atomics=r.atomics,
                                      balance_threshold=r.balance_threshold, backend=getattr(r, "backend", "auto"))
            image = out.image
            if getattr(camera, "alpha_mask", None) is not None:
                image = image * camera.alpha_mask
            loss, l1 = gaussian_splatting_loss(image, camera.image, self.cfg.optim.lambda_dssim)
            total = total + loss / b
            sums = sums + torch.stack([loss.detach(), l1.detach()])
            if first is None:
                first = (image.detach(), camera)
        total.backward()
        accumulate_view_grads(self.model, self._views)
        self._views = None
        sums = all_reduce_sum(comm, sums) / b
        loss, l1 = sums[0], sums[1]
        if self.device.type != "cuda":
            self.check_finite(loss, iteration)
        if first is None:       # fewer views than ranks: this rank rendered none
            camera = views[0][0]
            first = (torch.zeros(3, camera.height, camera.width, device=self.device), camera)
        outs = [(RasterOutput(None, p.radii, p.means2d, p.depths, None, None), cam.width, cam.height)
                for p, (cam, _) in zip(projs, views)]
        return loss, l1, first[0], first[1], outs

    def render(self, camera, bg):
        """Evaluation renders: every rank sends its rows of ``camera`` to rank 0, which renders it; the
        other ranks get the background (their metrics are not used: rank 0 alone logs)."""
        _, whole, _ = self.exchange([(camera, bg)], [0])
        if 0 in whole:
            r = self.cfg.run
            return rasterize_projected(whole[0], settings=self.settings(camera, bg), atomics=r.atomics,
                                       balance_threshold=r.balance_threshold, backend=getattr(r, "backend", "auto"))
        image = bg.reshape(3, 1, 1).expand(3, camera.height, camera.width).clone()
        return RasterOutput(image, None, None, None, None, None)

    # -- checkpoints ----------------------------------------------------------------------------
    def state(self) -> Optional[dict]:
        """The single-process checkpoint, gathered on rank 0 (None on the others).  Collective."""
        local = super().state()
        fields = gather_fields(self.comm, row_fields(self.model, self.optimizer, self.strategy))
        return full_state(local, fields, self.param_index) if self.comm.is_main else None

    def load_state(self, state: dict) -> None:
        """Load a single-process (or gathered) checkpoint: keep this rank's even share of its rows."""
        n = state["model"]["params"]["means"].shape[0]
        start, end = shard_bounds(n, self.comm.world)[self.comm.rank:self.comm.rank + 2]
        super().load_state(slice_state(state, start, end))

    def gathered_model(self) -> Optional[GaussianModel]:
        """The whole model on rank 0 (None elsewhere).  Collective."""
        m = self.model
        rows = gather_fields(self.comm, {k: v.detach() for k, v in m.param_dict().items()})
        if rows is None:
            return None
        return GaussianModel(**rows, max_sh_degree=m.max_sh_degree, active_sh_degree=m.active_sh_degree)


__all__ = ["DistributedTrainer", "ShardSink", "ShardedDensifyStrategy", "gather_rows"]
