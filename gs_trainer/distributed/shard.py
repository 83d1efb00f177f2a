"""Shards of Gaussians: which rows a rank owns, moving rows between ranks, and gathering shards.

Rank r owns the contiguous rows ``[bounds[r], bounds[r + 1])`` of the model a single process would hold,
in the same order.  The order matters: the rasterizer breaks depth ties by row order, and densification
consumes random numbers in row order, so keeping it is what makes a sharded run equal a single-process one.
Per-row state moves with its row: the parameters, Adam's two moments, and the densification statistics.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..model import PARAM_NAMES
from .comm import Comm, all_gather_ints, all_to_all_rows, gather_rows

ROW_STATE = ("exp_avg", "exp_avg_sq")
STAT_NAMES = ("grad_accum", "denom", "max_radii")


def shard_bounds(total: int, world: int) -> list[int]:
    """Even contiguous split of ``total`` rows: the first ``total % world`` ranks get one more."""
    base, extra = divmod(int(total), int(world))
    bounds = [0]
    for r in range(world):
        bounds.append(bounds[-1] + base + (1 if r < extra else 0))
    return bounds


# -- the per-row tensors of a trainer --------------------------------------------------------------
def row_fields(model, optimizer, strategy) -> dict[str, torch.Tensor]:
    """Every per-row tensor, keyed ``param``, ``param.exp_avg``, ``param.exp_avg_sq``, ``stat:name``."""
    fields: dict[str, torch.Tensor] = {}
    params = model.param_dict()
    for group in optimizer.param_groups:
        name = group["name"]
        p = params[name]
        fields[name] = p.detach()
        state = optimizer.state.get(p, {})
        for key in ROW_STATE:
            if key in state:
                fields[f"{name}.{key}"] = state[key]
    for key in STAT_NAMES:
        value = getattr(strategy, key, None)
        if value is not None and value.shape[0] == model.num_gaussians:
            fields[f"stat:{key}"] = value
    return fields


def pack(fields: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[tuple[str, tuple]]]:
    """Concatenate the fields column-wise into one float32 [n, C] tensor; the layout unpacks it."""
    layout = [(key, tuple(t.shape[1:])) for key, t in fields.items()]
    n = next(iter(fields.values())).shape[0]
    cols = [t.reshape(n, -1).to(torch.float32) for t in fields.values()]
    return torch.cat(cols, dim=1), layout


def unpack(rows: torch.Tensor, layout) -> dict[str, torch.Tensor]:
    out, col = {}, 0
    n = rows.shape[0]
    for key, rest in layout:
        width = 1
        for s in rest:
            width *= s
        out[key] = rows[:, col:col + width].reshape((n,) + rest).contiguous()
        col += width
    return out


# -- moving rows ------------------------------------------------------------------------------------
def repartition(comm: Comm, rows: torch.Tensor, positions: torch.Tensor, total: int) -> torch.Tensor:
    """Send every local row to the rank owning its global ``positions`` (int64, increasing) under the even
    split of ``total`` rows; returns this rank's new rows sorted by global position."""
    bounds = torch.tensor(shard_bounds(total, comm.world), dtype=torch.int64, device=positions.device)
    dest = torch.searchsorted(bounds, positions, right=True) - 1
    send_counts = torch.bincount(dest, minlength=comm.world).tolist() if dest.numel() else [0] * comm.world
    recv_counts = all_gather_ints(comm, send_counts)[:, comm.rank].tolist()
    got_rows = all_to_all_rows(comm, rows, send_counts, recv_counts)
    got_pos = all_to_all_rows(comm, positions[:, None], send_counts, recv_counts)[:, 0]
    order = torch.argsort(got_pos)
    return got_rows[order]


def gather_fields(comm: Comm, fields: dict[str, torch.Tensor], dst: int = 0) -> Optional[dict[str, torch.Tensor]]:
    """The whole model's per-row tensors on ``dst`` (shards concatenated in rank order), None elsewhere."""
    rows, layout = pack(fields)
    full = gather_rows(comm, rows, dst)
    return None if full is None else unpack(full, layout)


# -- checkpoints ------------------------------------------------------------------------------------
def full_state(local_state: dict, fields: Optional[dict[str, torch.Tensor]], param_index: dict[str, int]) -> Optional[dict]:
    """A single-process checkpoint (Trainer.state() layout) from a shard's state and the gathered rows."""
    if fields is None:
        return None
    state = dict(local_state)
    model = dict(local_state["model"])
    model["params"] = {name: fields[name].clone() for name in PARAM_NAMES}
    state["model"] = model
    opt = local_state["optimizer"]
    opt_state = {}
    for index, entry in opt["state"].items():
        name = next(n for n, i in param_index.items() if i == index)
        entry = dict(entry)
        for key in ROW_STATE:
            if key in entry:
                entry[key] = fields[f"{name}.{key}"].clone()
        opt_state[index] = entry
    state["optimizer"] = {"state": opt_state, "param_groups": opt["param_groups"]}
    state["densify"] = {key: fields.get(f"stat:{key}") for key in STAT_NAMES}
    return state


def slice_state(state: dict, start: int, end: int) -> dict:
    """The rows [start, end) of a single-process checkpoint, as a shard's checkpoint."""
    out = dict(state)
    model = dict(state["model"])
    model["params"] = {k: v[start:end].clone() for k, v in state["model"]["params"].items()}
    out["model"] = model
    opt = state["optimizer"]
    opt_state = {}
    for index, entry in opt["state"].items():
        entry = dict(entry)
        for key in ROW_STATE:
            if key in entry:
                entry[key] = entry[key][start:end].clone()
        opt_state[index] = entry
    out["optimizer"] = {"state": opt_state, "param_groups": opt["param_groups"]}
    dens = state.get("densify", {})
    n = state["model"]["params"]["means"].shape[0]
    out["densify"] = {k: (v[start:end].clone() if v is not None and v.shape[0] == n else None)
                      for k, v in dens.items()}
    return out
