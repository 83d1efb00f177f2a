"""Time the 3DGS loss (gaussian_splatting_loss, forward + backward) on CPU: the torch SSIM against the fused C++ one.

    python scripts/time_ssim.py --threads 1 --height 149 --width 199 --repeats 200

A random float32 [3, H, W] image against a noisy copy; each repeat is one loss forward and backward (as in a
training iteration).  Prints the median wall time (time.perf_counter) and process CPU time (time.process_time)
per repeat of each path, and their ratio.  On a shared machine the CPU time says more than the wall time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gs_trainer import losses


def _time(image, gt, repeats: int, warmup: int = 5):
    walls, cpus = [], []
    for k in range(warmup + repeats):
        x = image.detach().clone().requires_grad_(True)
        w0, c0 = time.perf_counter(), time.process_time()
        loss, _ = losses.gaussian_splatting_loss(x, gt, 0.2)
        loss.backward()
        w1, c1 = time.perf_counter(), time.process_time()
        if k >= warmup:
            walls.append(w1 - w0)
            cpus.append(c1 - c0)
    return statistics.median(walls) * 1e3, statistics.median(cpus) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--height", type=int, default=149)
    p.add_argument("--width", type=int, default=199)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=200)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, args.height, args.width, generator=g)
    gt = (image + 0.1 * torch.randn(image.shape, generator=g)).clamp(0, 1)
    from cuda_rasterizer._cpu_backend import load_cpu_extension
    load_cpu_extension()
    fused_ext = losses._cpu_ssim_extension
    losses._cpu_ssim_extension = lambda *a: None   # the torch SSIM
    try:
        torch_wall, torch_cpu = _time(image, gt, args.repeats)
    finally:
        losses._cpu_ssim_extension = fused_ext
    fused_wall, fused_cpu = _time(image, gt, args.repeats)
    print(f"gaussian_splatting_loss forward+backward, 3x{args.height}x{args.width} float32, "
          f"{args.threads} thread(s), median of {args.repeats}:")
    print(f"  torch SSIM   {torch_wall:7.3f} ms wall  {torch_cpu:7.3f} ms CPU")
    print(f"  fused C++    {fused_wall:7.3f} ms wall  {fused_cpu:7.3f} ms CPU")
    print(f"  ratio        {torch_wall / fused_wall:7.2f}x wall  {torch_cpu / fused_cpu:7.2f}x CPU")


if __name__ == "__main__":
    main()
