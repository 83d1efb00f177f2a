"""Redraw gs-bench's charts from a results.json, e.g. into docs/ with a prefix naming the device.

    python scripts/plot_bench.py bench_out/results.json --out docs --prefix h100_1m_1080p_
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gs_trainer.bench import plot as bench_plot


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="results.json written by gs-bench")
    p.add_argument("--out", default=".", help="folder for the PNGs")
    p.add_argument("--prefix", default="", help="prefix of the PNG names")
    args = p.parse_args(argv)
    result = json.loads(Path(args.results).read_text())
    env, sc = result["environment"], result["scene"]
    where = env.get("gpu") or f"CPU ({env.get('cpu', '?')})"
    title = f"{where}, {sc.get('num_gaussians', 0):,} Gaussians, {sc['width']}x{sc['height']}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = [bench_plot.plot_policies(result["rows"], out / f"{args.prefix}policies.png", title),
               bench_plot.plot_threshold_sweep(result["rows"], out / f"{args.prefix}threshold_sweep.png", title)]
    lanes = result.get("lane_histogram", {})
    hist = lanes.get("cuda") or lanes.get("reference")
    if hist:
        how = "counting kernel" if lanes.get("cuda") else "exact, reference rasterizer"
        written.append(bench_plot.plot_lane_histogram(
            hist, out / f"{args.prefix}lane_histogram.png",
            f"Contributing lanes per (warp, Gaussian) step ({how}): {title}"))
    for path in written:
        if path:
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
