"""The process group and the collectives the sharded trainer uses.

Started by ``torchrun`` (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT):
NCCL when training on CUDA, gloo on the CPU.  Every collective runs under the group's timeout
(``--dist_timeout``), so a rank that dies or hangs makes the others stop with ``RankLost`` instead of
waiting forever.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

ENV_KEYS = ("RANK", "WORLD_SIZE")


class RankLost(RuntimeError):
    """Another rank died, hung past the timeout, or failed: this rank cannot go on."""


def launched_distributed() -> bool:
    """True when a launcher (torchrun) started this process as one rank of a group."""
    return all(k in os.environ for k in ENV_KEYS)


@dataclass(frozen=True)
class Comm:
    """This rank's view of the group."""

    rank: int
    world: int
    device: torch.device
    timeout_s: float
    group: Optional[object] = None   # None = the default group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def lost(self, err: BaseException, what: str) -> RankLost:
        return RankLost(f"rank {self.rank}/{self.world}: {what} failed, another rank has died, failed or not "
                        f"answered within --dist_timeout {self.timeout_s:g} s ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); stopping this rank too")


def init_comm(device: str, timeout_s: float) -> Comm:
    """Join the group torchrun set up: NCCL on CUDA (one GPU per local rank), gloo on the CPU."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.startswith("cuda"):
        if torch.cuda.device_count() <= local_rank:
            raise RuntimeError(f"rank {rank}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} "
                               "CUDA device(s) on this machine")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    comm = Comm(rank, world, dev, float(timeout_s))
    try:
        kwargs = dict(backend=backend, timeout=timedelta(seconds=float(timeout_s)), rank=rank, world_size=world)
        if backend == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    except Exception as err:  # noqa: BLE001 - rendezvous raises several types
        raise comm.lost(err, "joining the process group") from None
    return comm


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _guard(comm: Comm, what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except RankLost:
        raise
    except (RuntimeError, dist.DistBackendError) as err:
        raise comm.lost(err, what) from None


def all_gather_ints(comm: Comm, values: list[int]) -> torch.Tensor:
    """[world, len(values)] int64 on the CPU: every rank's ``values``."""
    device = comm.device
    mine = torch.tensor(values, dtype=torch.int64, device=device)
    out = [torch.empty_like(mine) for _ in range(comm.world)]
    _guard(comm, "all_gather", dist.all_gather, out, mine, group=comm.group)
    return torch.stack(out).cpu()


def all_reduce_sum(comm: Comm, t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    _guard(comm, "all_reduce", dist.all_reduce, t, group=comm.group)
    return t


def all_to_all_rows(comm: Comm, send: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> torch.Tensor:
    """Rows ``send[sum(send_counts[:d]):...]`` go to rank d; returns the rows received, source-rank order.
    Not differentiable (see ``exchange_rows``)."""
    recv = send.new_empty((int(sum(recv_counts)),) + tuple(send.shape[1:]))
    _guard(comm, "all_to_all", dist.all_to_all_single, recv, send.contiguous(), list(recv_counts),
           list(send_counts), group=comm.group)
    return recv


class _ExchangeRows(torch.autograd.Function):
    """all_to_all of rows; backward sends each row's gradient back to the rank the row came from."""

    @staticmethod
    def forward(ctx, send, comm: Comm, send_counts: list[int], recv_counts: list[int]):
        ctx.comm, ctx.send_counts, ctx.recv_counts = comm, list(send_counts), list(recv_counts)
        return all_to_all_rows(comm, send, send_counts, recv_counts)

    @staticmethod
    def backward(ctx, grad):
        # every rank reaches this backward exactly once per exchange (the trainer ties the received rows
        # into each rank's loss), so the reverse all_to_all is matched on all ranks
        back = all_to_all_rows(ctx.comm, grad.contiguous(), ctx.recv_counts, ctx.send_counts)
        return back, None, None, None


def exchange_rows(comm: Comm, send: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> torch.Tensor:
    """Differentiable all_to_all of ``send`` [S, C] -> [R, C] (S = sum(send_counts), R = sum(recv_counts))."""
    return _ExchangeRows.apply(send, comm, send_counts, recv_counts)


def gather_rows(comm: Comm, rows: torch.Tensor, dst: int = 0) -> Optional[torch.Tensor]:
    """Concatenate every rank's ``rows`` [n_r, C] in rank order on ``dst`` (None elsewhere).  Shards may
    differ in size: counts first, then one all_to_all in which only ``dst`` receives."""
    counts = all_gather_ints(comm, [rows.shape[0]])[:, 0].tolist()
    send_counts = [rows.shape[0] if d == dst else 0 for d in range(comm.world)]
    recv_counts = counts if comm.rank == dst else [0] * comm.world
    out = all_to_all_rows(comm, rows, send_counts, recv_counts)
    return out if comm.rank == dst else None


def barrier(comm: Comm) -> None:
    _guard(comm, "barrier", dist.barrier, group=comm.group)
