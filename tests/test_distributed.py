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
#: Parameters and Adam moments after K steps: the same float32 operations on the same rows, per-view
#: gradients summed in the same order (docs/SCALING.md, "Why the two runs agree bitwise"); measured bitwise
#: equal on the project's x86 CPU at one thread per rank.  The tolerance is for other CPUs and thread counts.
PARAM_ATOL = 2e-5
PARAM_RTOL = 1e-4
#: The largest shard holds ceil(M / N) of the M rows; memory per row is the same everywhere.
MEMORY_SLACK = 1.02
#: data/tabletop (6k Gaussians): Adam's epsilon is 1e-15, so an element whose gradient is pure rounding noise
#: (cancelling contributions) takes a step of up to its learning rate, in either run independently.  Seen:
#: 8 of 24,520 quaternion elements off by up to 5e-5 after 8 steps.  So: a tiny fraction of the elements may
#: exceed PARAM_ATOL, and none may differ by more than a few steps of the largest learning rate used.
NOISY_FRACTION = 1e-3
NOISY_MAX = 0.05 * 8       # opacity_lr (0.025, the largest) * sqrt(2) per step, 8 steps, rounded up
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


@pytest.mark.parametrize("b", [2, 3])
def test_one_backward_over_view_leaves_equals_b_backward_passes(b):
    """The sharded trainer backpropagates the whole batch at once (the exchange is one collective); its
    parameter gradients must still be bitwise those of B backward passes, one view after the other: each
    view projects from its own leaves (view_models), which are then added in view order."""
    from gs_trainer.distributed.trainer import accumulate_view_grads, view_models
    from gs_trainer.losses import gaussian_splatting_loss
    from gs_trainer.renderer import render
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sc = scene()
        views = [(cam, torch.rand(3, generator=torch.Generator().manual_seed(i)))
                 for i, cam in enumerate(sc.train_cameras[:b])]

        def model():
            return GaussianModel.from_points(sc.points, sc.colors, 1, "cpu")

        single = model()
        for cam, bg in views:
            (gaussian_splatting_loss(render(single, cam, bg).image, cam.image)[0] / b).backward()
        batched = model()
        leaves = view_models(batched, b)
        total = sum(gaussian_splatting_loss(render(leaf, cam, bg).image, cam.image)[0] / b
                    for leaf, (cam, bg) in zip(leaves, views))
        total.backward()
        accumulate_view_grads(batched, leaves)
        for name, p in single.param_dict().items():
            got = batched.param_dict()[name].grad
            assert torch.equal(got, p.grad), (name, float((got - p.grad).abs().max()))
        assert all(getattr(leaf, name).grad is None for leaf in leaves for name in single.param_dict())
    finally:
        torch.set_num_threads(threads)


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


# -- the command line ------------------------------------------------------------------------------
CLI_ARGS = ["-s", str(ROOT / "data" / "tabletop"), "-r", "8", "--sh_degree", "1", "--quiet", "--no-tensorboard",
            "--test_iterations", "--cpu_threads", "1", "--densify_from_iter", "2", "--densification_interval", "3",
            "--densify_until_iter", "7"]
CLI_TIMEOUT_S = 300


def cli_env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def test_torchrun_run_folder_equals_single_process(tmp_path):
    """``torchrun --nproc_per_node=2 -m gs_trainer.train`` writes the folder a --batch_size 2 run writes."""
    common = CLI_ARGS + ["--iterations", "8", "--save_iterations", "8"]
    single = subprocess.run([sys.executable, "-m", "gs_trainer.train", "-m", str(tmp_path / "single"),
                             "--batch_size", "2"] + common, env=cli_env(), capture_output=True, text=True,
                            timeout=CLI_TIMEOUT_S)
    assert single.returncode == 0, single.stderr[-3000:]
    dist_run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                               f"--master_port={free_port()}", "-m", "gs_trainer.train",
                               "-m", str(tmp_path / "dist")] + common, env=cli_env(), capture_output=True,
                              text=True, timeout=CLI_TIMEOUT_S)
    assert dist_run.returncode == 0, dist_run.stderr[-3000:]
    listing = {run: sorted(str(p.relative_to(tmp_path / run)) for p in (tmp_path / run).rglob("*"))
               for run in ("single", "dist")}
    assert listing["dist"] == listing["single"]
    assert "config.yaml" in listing["dist"] and "cameras.json" in listing["dist"]
    assert (tmp_path / "single" / "cameras.json").read_text() == (tmp_path / "dist" / "cameras.json").read_text()
    got = GaussianModel.load_ply(tmp_path / "dist" / "point_cloud" / "iteration_8" / "point_cloud.ply")
    want = GaussianModel.load_ply(tmp_path / "single" / "point_cloud" / "iteration_8" / "point_cloud.ply")
    assert got.num_gaussians == want.num_gaussians
    for name, p in want.param_dict().items():
        diff = (getattr(got, name) - p).abs()
        off = diff > PARAM_ATOL + PARAM_RTOL * p.abs()
        assert off.float().mean() <= NOISY_FRACTION and diff.max() <= NOISY_MAX, \
            (name, int(off.sum()), off.numel(), float(diff.max()))


def test_a_dead_rank_stops_the_others_with_a_clear_message(tmp_path):
    port = free_port()
    run = tmp_path / "run"
    args = [sys.executable, "-m", "gs_trainer.train", "-m", str(run), "--iterations", "100000",
            "--dist_timeout", "20", "--save_iterations"] + CLI_ARGS
    procs = [subprocess.Popen(args, env=cli_env(RANK=r, WORLD_SIZE=2, LOCAL_RANK=r, MASTER_ADDR="127.0.0.1",
                                                MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        deadline = time.monotonic() + CLI_TIMEOUT_S
        while not (run / "cameras.json").is_file():     # both ranks joined and loaded the scene
            assert time.monotonic() < deadline and procs[0].poll() is None, procs[0].communicate()[1][-2000:]
            time.sleep(0.5)
        time.sleep(3.0)                                  # let them train a little
        procs[1].send_signal(signal.SIGKILL)
        started = time.monotonic()
        _, err = procs[0].communicate(timeout=120)
        waited = time.monotonic() - started
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert procs[0].returncode == 4, err[-3000:]
    assert "another rank has died" in err and "rank 0/2" in err, err[-3000:]
    assert waited < 60, f"rank 0 took {waited:.0f} s to notice"
