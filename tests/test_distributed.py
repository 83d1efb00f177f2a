"""Sharded training on CPU with gloo: N ranks started by torch.multiprocessing (and the CLI under a
torchrun-style environment) must train the same model as one process with --batch_size N.

The ranks keep the single-process row order (shards are contiguous, and densification puts every new row
where the single process puts it), so parameters are compared row by row.  Bounded in time: every rank
runs under a gloo timeout and every wait in these tests has a limit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from gs_trainer.config import TrainConfig
from gs_trainer.model import GaussianModel
from gs_trainer.trainer import Trainer
from gs_trainer.utils_io import torch_load
from gs_trainer.utils_run import RunFolder
from gs_trainer.utils_synthetic import make_synthetic_scene

ROOT = Path(__file__).resolve().parents[1]
#: Parameters and Adam moments after K steps: the same float32 operations on the same rows, except the
#: order in which a Gaussian's per-view gradients are summed (autograd over B projections vs B backward
#: passes) and the per-tile matmul over a subset of rows: a few ulps per step, grown by Adam over K steps.
PARAM_ATOL = 2e-5
PARAM_RTOL = 1e-4
#: The largest shard holds ceil(M / N) of the M rows; memory per row is the same everywhere.
MEMORY_SLACK = 1.02
JOIN_TIMEOUT_S = 240   # a whole multi-rank run of this file's small scene; far above the measured time
GLOO_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scene():
    return make_synthetic_scene(num_gaussians=120, num_views=10, width=40, height=30, seed=7)


def config(batch_size: int, iterations: int = 24, checkpoint_iterations=(), save_iterations=()):
    cfg = TrainConfig()
    cfg.optim.iterations = iterations
    cfg.optim.position_lr_max_steps = iterations
    cfg.optim.batch_size = batch_size
    cfg.optim.random_background = True      # the shared generator must stay in step on every rank
    cfg.model.sh_degree = 1
    cfg.model.sh_increase_interval = 10
    d = cfg.densify
    d.densify_from_iter, d.densify_until_iter, d.densification_interval = 4, 20, 5
    d.densify_grad_threshold = 0.0001
    d.min_opacity = 0.09                    # initial opacity 0.1: some Gaussians fall below and are pruned
    d.opacity_reset_interval = 1000
    r = cfg.run
    r.test_iterations, r.save_iterations, r.quiet, r.tensorboard = [], list(save_iterations), True, False
    r.checkpoint_iterations, r.dist_timeout = list(checkpoint_iterations), GLOO_TIMEOUT_S
    return cfg.validate()


def memory_bytes(trainer) -> int:
    total = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    for state in trainer.optimizer.state.values():
        total += sum(v.numel() * v.element_size() for k, v in state.items() if k in ("exp_avg", "exp_avg_sq"))
    return total


def _worker(rank, world, port, out_dir, batch_size, iterations, checkpoints, resume):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    from gs_trainer.distributed.comm import all_gather_ints, init_comm, shutdown
    from gs_trainer.distributed.trainer import DistributedTrainer
    comm = init_comm("cpu", GLOO_TIMEOUT_S)
    out = Path(out_dir)
    folder = RunFolder(out / "run", tensorboard=False) if rank == 0 else None
    cfg = config(batch_size, iterations, checkpoints, save_iterations=[iterations])
    trainer = DistributedTrainer(cfg, scene(), folder, comm)
    if resume:
        trainer.load_state(torch_load(resume))
    trainer.train()
    state = trainer.state()
    mem = all_gather_ints(comm, [memory_bytes(trainer)])[:, 0].tolist()
    if rank == 0:
        torch.save({"state": state, "memory": mem}, out / "result.pt")
    shutdown()


def run_ranks(world, tmp, batch_size, iterations=24, checkpoints=(), resume=None) -> dict:
    ctx = mp.start_processes(_worker, args=(world, free_port(), str(tmp), batch_size, iterations, list(checkpoints),
                                            resume), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{world} ranks did not finish within {JOIN_TIMEOUT_S} s")
    return torch.load(Path(tmp) / "result.pt", weights_only=False)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, --batch_size 2 and 3, 24 steps: the references."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    runs = {}
    for b in (2, 3):
        tmp = tmp_path_factory.mktemp(f"single{b}")
        trainer = Trainer(config(b, checkpoint_iterations=[12], save_iterations=[24]), scene(),
                          RunFolder(tmp, tensorboard=False))
        events = []
        densify = trainer.strategy.densify_and_prune
        trainer.strategy.densify_and_prune = lambda *a, **k: events.append(densify(*a, **k)) or events[-1]
        trainer.train()
        runs[b] = dict(trainer=trainer, events=events, folder=tmp, memory=memory_bytes(trainer))
    torch.set_num_threads(threads)
    return runs


def assert_same_state(got: dict, want: dict):
    gp, wp = got["model"]["params"], want["model"]["params"]
    assert gp["means"].shape == wp["means"].shape, (gp["means"].shape, wp["means"].shape)
    for name in wp:
        torch.testing.assert_close(gp[name], wp[name], rtol=PARAM_RTOL, atol=PARAM_ATOL, msg=lambda m: f"{name}: {m}")
    for index, entry in want["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(got["optimizer"]["state"][index][key], entry[key], rtol=PARAM_RTOL,
                                       atol=PARAM_ATOL, msg=lambda m: f"state {index}.{key}: {m}")
    assert got["iteration"] == want["iteration"]
    assert torch.equal(got["camera_order"], want["camera_order"])
    assert torch.equal(got["gen"], want["gen"]), "the shared generator went out of step"


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_run_equals_single_process_batch(single, tmp_path, world):
    ref = single[world]
    events = ref["events"]
    assert sum(e["cloned"] + e["split"] for e in events) > 0 and sum(e["pruned"] for e in events) > 0, \
        f"the reference run must densify and prune: {events}"
    result = run_ranks(world, tmp_path, world)
    assert_same_state(result["state"], ref["trainer"].state())
    # the run folder: rank 0 wrote the gathered PLY, equal to the single-process one
    got = GaussianModel.load_ply(tmp_path / "run" / "point_cloud" / "iteration_24" / "point_cloud.ply")
    want = GaussianModel.load_ply(RunFolder(ref["folder"], tensorboard=False).ply_path(24))
    for name, p in want.param_dict().items():
        torch.testing.assert_close(getattr(got, name), p, rtol=PARAM_RTOL, atol=PARAM_ATOL)
    # parameters + Adam moments: each rank about 1/N of the single process
    memory = result["memory"]
    assert sum(memory) == ref["memory"]
    assert max(memory) <= MEMORY_SLACK * ref["memory"] / world + 1024, (memory, ref["memory"])


def test_resume_with_another_rank_count(single, tmp_path):
    """A checkpoint of a 2-rank run resumed on 3 ranks (same batch of 2) ends where one process ends."""
    run_ranks(2, tmp_path / "two", 2, iterations=24, checkpoints=[12])
    ckpt = tmp_path / "two" / "run" / "chkpnt12.pth"
    assert ckpt.is_file()
    result = run_ranks(3, tmp_path / "three", 2, iterations=24, resume=str(ckpt))
    assert_same_state(result["state"], single[2]["trainer"].state())
    # and the single process can resume the distributed checkpoint too
    one = Trainer(config(2), scene(), RunFolder(tmp_path / "one", tensorboard=False))
    one.load_state(torch_load(ckpt))
    one.train()
    assert_same_state(one.state(), single[2]["trainer"].state())
