"""Time the CPU backend's stages (wall and process CPU time) on gs-bench's synthetic cloud.

    python scripts/time_cpu_backend.py --n 100000 --width 1920 --height 1080 --threads 2
    python scripts/time_cpu_backend.py --scene data/tabletop --threads 1 --repeats 8    # SfM points, view 0

Prints one line per stage and repeat, then the forward+backward total (median over repeats) and the process's
peak resident memory.  CPU time is reported too because a shared machine's wall time says more about the
other jobs than about this code: with T threads on an idle machine, wall ~ CPU / T.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from cuda_rasterizer._cpu_backend import load_cpu_extension
from cuda_rasterizer.cpu_autograd import CpuCamera
from gs_trainer.bench.scene import synthetic_cloud


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scene", default=None, help="a scene folder: its SfM points and first training view, at "
                   "its full size, instead of the synthetic cloud")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ext = load_cpu_extension()
    if args.scene:
        from gs_trainer.bench.scene import scene_from_files
        sc = scene_from_files(args.scene, None)
        args.width, args.height = sc.settings.image_width, sc.settings.image_height
    else:
        sc = synthetic_cloud(args.n, args.width, args.height)
    means, scales, rots, ops, shs = sc.activated(False)
    args.n = means.shape[0]
    ops = ops.reshape(-1).contiguous()
    cam = CpuCamera(sc.settings)
    g = torch.rand(3, args.height, args.width, generator=torch.Generator().manual_seed(0))
    totals = []
    for rep in range(args.repeats):
        wall = cpu = 0.0

        def timed(name, f):
            nonlocal wall, cpu
            t0, c0 = time.perf_counter(), time.process_time()
            r = f()
            dw, dc = time.perf_counter() - t0, time.process_time() - c0
            wall, cpu = wall + dw, cpu + dc
            print(f"repeat {rep} {name:20s} wall {1000 * dw:8.1f} ms   cpu {1000 * dc:8.1f} ms", flush=True)
            return r

        m2d, con, col, dep, radii, tiles, clamped = timed("preprocess", lambda: ext.preprocess_forward(
            means, scales, rots, shs, *cam.args()))
        pl, rg, off, pp = timed("bin", lambda: ext.bin_gaussians(m2d, dep, radii, tiles, *cam.args()))
        img, fT, nc, _ = timed("render forward", lambda: ext.render_forward(m2d, con, col, ops, dep, pl, rg,
                                                                            *cam.args()))
        gr = timed("render backward", lambda: ext.render_backward(m2d, con, col, ops, pl, rg, off, pp, fT, nc, g,
                                                                  None, *cam.args()))
        timed("preprocess backward", lambda: ext.preprocess_backward(means, scales, rots, shs, tiles, clamped, gr[0],
                                                                     gr[1], gr[2], None, *cam.args()))
        totals.append((wall, cpu))
        print(f"repeat {rep} forward+backward     wall {1000 * wall:8.1f} ms   cpu {1000 * cpu:8.1f} ms")
    print(f"{args.n} Gaussians at {args.width}x{args.height}, {args.threads} threads, {pl.numel()} pairs: "
          f"forward+backward median wall {1000 * statistics.median(t[0] for t in totals):.0f} ms, "
          f"median CPU {1000 * statistics.median(t[1] for t in totals):.0f} ms; peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
