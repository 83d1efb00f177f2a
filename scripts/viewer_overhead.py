"""What gs-train --viewer costs training when nobody is connected.

    python scripts/viewer_overhead.py [--scene data/tabletop] [-r 8] [--iterations 200] [--rounds 3]

Trains the same short run with and without the live viewer hook (rounds interleaved, so machine load
hits both alike) and reports the median time per iteration of each, their ratio, and the cost of one
``LiveViewer.on_step`` call measured on its own.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scene", default="data/tabletop")
    p.add_argument("-r", "--resolution", type=int, default=8)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    from gs_trainer.config import TrainConfig
    from gs_trainer.data.dataset import Scene
    from gs_trainer.trainer import Trainer
    from gs_trainer.utils_run import RunFolder
    from gs_trainer.viewer.live import LiveViewer

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="viewer-overhead-"))
    scene = Scene(args.scene, resolution=args.resolution, eval=True, cache_dir=str(tmp / "cache"))

    def trainer():
        cfg = TrainConfig()
        cfg.optim.iterations = args.iterations
        cfg.run.test_iterations, cfg.run.save_iterations, cfg.run.quiet = [], [], True
        cfg.densify.densify_until_iter = 0          # the same model size in every round
        return Trainer(cfg.validate(), scene, RunFolder(tmp / "run", tensorboard=False))

    times = {"without": [], "with": []}
    live = None
    for _ in range(args.rounds):
        for kind in ("without", "with"):
            t = trainer()
            if kind == "with":
                live = LiveViewer(t, port=0)
                t.on_step = live.on_step
            start = time.perf_counter()
            t.train()
            times[kind].append(1000.0 * (time.perf_counter() - start) / args.iterations)
            if live is not None:
                live.close()
                live = None

    t = trainer()
    live = LiveViewer(t, port=0)
    loss = torch.tensor(0.1)
    calls = 100000
    start = time.perf_counter()
    for i in range(calls):
        live.on_step(t, i, loss)
    call_us = 1e6 * (time.perf_counter() - start) / calls
    live.close()
    without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
    print(json.dumps({
        "scene": args.scene, "resolution": args.resolution, "iterations": args.iterations,
        "threads": args.threads, "gaussians": len(scene.points),
        "iter_ms_without": times["without"], "iter_ms_with": times["with"],
        "median_ratio_with_over_without": with_ / without,
        "on_step_us_no_client": call_us, "on_step_fraction_of_iteration": call_us / 1000.0 / without,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }, indent=2))


if __name__ == "__main__":
    main()
