"""gs-metrics: PSNR and SSIM of rendered views against their ground truth, per view and mean.

    gs-metrics -m runs/tabletop [--split test]

Reads RUN/<split>/ours_N/{renders,gt}/*.png written by gs-render (or by the original's render.py) and
writes, in the original's shapes (numbers only, so that its tables and scripts read them)::

    RUN/results.json    {"ours_N": {"SSIM": mean, "PSNR": mean}}
    RUN/per_view.json   {"ours_N": {"SSIM": {"00000.png": v, ...}, "PSNR": {...}}}

for the test split; ``--split train`` writes results_train.json and per_view_train.json instead, so that
the test results are never overwritten.  What the original does not have (view counts, which split, why
LPIPS is missing) goes to RUN/results_info.json (results_info_train.json).  LPIPS is not computed: it
needs pretrained network weights that this project does not ship.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .metrics import image_metrics

log = logging.getLogger("gs_trainer")
EXIT_BAD_INPUT = 2


def read_png(path: Path) -> torch.Tensor:
    import cv2
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: cannot read image")
    return torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1))).float() / 255.0


METRICS = ("SSIM", "PSNR")   # the original's key order
LPIPS_NOTE = "not computed: it needs pretrained network weights that this project does not ship"


def output_names(split: str) -> tuple[str, str, str]:
    """(results, per_view, info) file names of a split; the test split keeps the original's names."""
    suffix = "" if split == "test" else f"_{split}"
    return f"results{suffix}.json", f"per_view{suffix}.json", f"results_info{suffix}.json"


def score_method(method_dir: Path) -> dict:
    """{"PSNR": mean, "SSIM": mean, "num_views": n, "per_view": {name: {"PSNR", "SSIM"}}}."""
    renders, gts = method_dir / "renders", method_dir / "gt"
    names = sorted(p.name for p in renders.glob("*.png"))
    if not names:
        raise ValueError(f"{renders}: no rendered images (run gs-render first)")
    per_view = {}
    for name in names:
        if not (gts / name).is_file():
            raise ValueError(f"{gts / name}: ground truth missing for {renders / name}")
        render, gt = read_png(renders / name), read_png(gts / name)
        if render.shape != gt.shape:
            raise ValueError(f"{renders / name}: size {tuple(render.shape)} differs from its ground truth {tuple(gt.shape)}")
        per_view[name] = image_metrics(render, gt)
    mean = {k: float(np.mean([v[k] for v in per_view.values()])) for k in ("PSNR", "SSIM")}
    return {**mean, "num_views": len(names), "per_view": per_view}


def main(argv: Optional[list[str]] = None) -> int:
    from .utils_io import atomic_write_json

    p = argparse.ArgumentParser(prog="gs-metrics", description="PSNR / SSIM of gs-render's output.")
    p.add_argument("-m", "--model_paths", "--model_path", nargs="+", required=True,
                   help="run folder(s), of gs-train or of the original trainer")
    p.add_argument("--split", choices=("train", "test"), default="test")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    status = 0
    for run in map(Path, args.model_paths):
        split_dir = run / args.split
        methods = sorted((d for d in split_dir.glob("ours_*") if d.is_dir() and d.name[5:].isdigit()),
                         key=lambda d: int(d.name[5:])) if split_dir.is_dir() else []
        if not methods:
            print(f"gs-metrics: error: {split_dir}: no ours_N folders (run gs-render -m {run} --split {args.split})",
                  file=sys.stderr)
            status = EXIT_BAD_INPUT
            continue
        scored_all = {}
        try:
            for method in methods:
                scored_all[method.name] = score_method(method)
        except ValueError as err:
            print(f"gs-metrics: error: {err}", file=sys.stderr)
            status = EXIT_BAD_INPUT
            continue
        results = {name: {k: sc[k] for k in METRICS} for name, sc in scored_all.items()}
        per_view = {name: {k: {view: m[k] for view, m in sc["per_view"].items()} for k in METRICS}
                    for name, sc in scored_all.items()}
        info = {name: {"split": args.split, "num_views": sc["num_views"], "LPIPS": LPIPS_NOTE}
                for name, sc in scored_all.items()}
        results_name, per_view_name, info_name = output_names(args.split)
        atomic_write_json(run / results_name, results)
        atomic_write_json(run / per_view_name, per_view)
        atomic_write_json(run / info_name, info)
        print(f"\n{run} ({args.split} views; LPIPS not computed: it needs network weights this project does not ship)")
        for name, scored in scored_all.items():
            print(f"  {name}")
            print(f"    {'view':<14}{'PSNR':>8}{'SSIM':>8}")
            for view, m in scored["per_view"].items():
                print(f"    {view:<14}{m['PSNR']:8.2f}{m['SSIM']:8.4f}")
            print(f"    {'mean':<14}{scored['PSNR']:8.2f}{scored['SSIM']:8.4f}")
        print(f"  -> {run / results_name}, {run / per_view_name}")
    return status


if __name__ == "__main__":
    sys.exit(main())
