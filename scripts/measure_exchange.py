"""Bytes and time of the sharded trainer's all-to-all, measured on the CPU with gloo.

    python scripts/measure_exchange.py --ranks 2 3 --steps 10 -r 4 [--scene data/tabletop] [--out exchange.json]

For each rank count N: N processes (torch.multiprocessing, gloo on 127.0.0.1) train ``--steps`` steps of a
batch of N views on the scene, without densification (so the model size is fixed), and report per step:
the visible rows projected (over all cameras of the batch), the rows sent to other ranks, the bytes of
the forward exchange (the backward sends as many back), and the seconds spent in the forward all_to_all.
Writes JSON; docs/SCALING.md holds the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, scene_path, resolution, steps, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    from gs_trainer.config import TrainConfig
    from gs_trainer.data.dataset import Scene
    from gs_trainer.distributed.comm import all_gather_ints, init_comm, shutdown
    from gs_trainer.distributed.trainer import ROW_COLUMNS, DistributedTrainer

    comm = init_comm("cpu", 300)
    cfg = TrainConfig()
    cfg.model.resolution, cfg.model.sh_degree = resolution, 3
    cfg.optim.iterations = steps
    cfg.densify.densify_from_iter = 10 ** 9
    cfg.run.test_iterations, cfg.run.save_iterations, cfg.run.quiet, cfg.run.tensorboard = [], [], True, False
    scene = Scene(scene_path, resolution=resolution, device="cpu", cache_dir=str(Path(out).parent / "cache"))
    trainer = DistributedTrainer(cfg.validate(), scene, None, comm)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    t = trainer.traffic
    rows = all_gather_ints(comm, [t["visible_rows"], t["rows_out"], int(1e6 * t["exchange_s"]),
                                  trainer.model.num_gaussians])
    if comm.is_main:
        per_rank = [dict(gaussians=int(r[3]), visible_rows_per_step=r[0] / steps, rows_out_per_step=r[1] / steps,
                         bytes_forward_per_step=r[1] * ROW_COLUMNS * 4 / steps,
                         exchange_ms_per_step=r[2] / 1000 / steps) for r in rows.tolist()]
        total_out = sum(r["bytes_forward_per_step"] for r in per_rank)
        result = dict(ranks=world, steps=steps, batch=world, image=[scene.train_cameras[0].width,
                                                                     scene.train_cameras[0].height],
                      step_s=wall / steps, bytes_forward_per_step=total_out, bytes_backward_per_step=total_out,
                      per_rank=per_rank)
        Path(out).write_text(json.dumps(result, indent=1))
    shutdown()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", default=str(ROOT / "data" / "tabletop"))
    parser.add_argument("-r", "--resolution", type=int, default=4)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default="exchange.json")
    args = parser.parse_args(argv)
    results = []
    tmp = Path(args.out).resolve().parent
    for world in args.ranks:
        out = tmp / f".exchange_{world}.json"
        mp.start_processes(_worker, args=(world, _free_port(), args.scene, args.resolution, args.steps, str(out)),
                           nprocs=world, start_method="spawn")
        results.append(json.loads(out.read_text()))
        out.unlink()
        r = results[-1]
        print(f"{world} ranks, {r['image'][0]}x{r['image'][1]} px, batch {world}: step {r['step_s']:.2f} s; "
              f"forward exchange {r['bytes_forward_per_step'] / 1024:.1f} KiB/step (the same back); per rank: "
              + "; ".join(f"{p['gaussians']} Gaussians, {p['visible_rows_per_step']:.0f} visible rows, "
                          f"{p['rows_out_per_step']:.0f} sent, {p['exchange_ms_per_step']:.1f} ms"
                          for p in r["per_rank"]))
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
