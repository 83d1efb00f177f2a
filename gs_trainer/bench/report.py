"""gs-bench results: environment record, targets, JSON, CSV and the closing table."""

from __future__ import annotations

import csv
import datetime
import platform
import subprocess
from pathlib import Path
from typing import Optional

import torch

from cuda_rasterizer import DEFAULT_BALANCE_THRESHOLD

from ..utils_io import atomic_write_json, atomic_write_text

#: The issue's targets, reported against (never enforced): kernel and iteration speed-ups over baseline,
#: distance to the no-atomics floor, and being faster than gsplat.
TARGET_KERNEL_SPEEDUP = 2.5
TARGET_KERNEL_VS_FLOOR = 1.3
TARGET_TRAIN_SPEEDUP = 1.5
#: The targets are stated for a 1080p view of a scene with at least this many Gaussians.
TARGET_MIN_GAUSSIANS = 1_000_000
TARGET_MIN_PIXELS = 1920 * 1080

CSV_COLUMNS = ("policy", "atomics", "balance_threshold", "kernel_ms", "backward_ms", "forward_ms", "train_iter_ms",
               "speedup_kernel", "speedup_backward", "speedup_forward", "speedup_train_iter", "kernel_vs_floor",
               "peak_mem_fwd_bwd_mib", "peak_mem_train_mib", "grad_rel_diff_vs_baseline", "errors")


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device, argv: list) -> dict:
    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "worktree_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "command": " ".join(["gs-bench"] + [str(a) for a in argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "host": platform.node(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                    "sm_count": props.multi_processor_count, "cuda": torch.version.cuda})
    else:
        env.update({"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()})
    return env


def evaluate_targets(result: dict) -> dict:
    """Each target: the measured value, whether it is met, and whether the run's input qualifies."""
    rows = {r["policy"]: r for r in result.get("rows", [])}
    settings = result.get("scene", {})
    qualifies = (settings.get("num_gaussians", 0) >= TARGET_MIN_GAUSSIANS
                 and settings.get("width", 0) * settings.get("height", 0) >= TARGET_MIN_PIXELS)
    distwar = rows.get(f"distwar@{DEFAULT_BALANCE_THRESHOLD}", {})
    sweep = [r for r in rows.values() if r.get("atomics") == "distwar" and r.get("kernel_ms")]
    best = min(sweep, key=lambda r: r["kernel_ms"]) if sweep else {}

    def target(value, goal, better):
        if value is None:
            return {"value": None, "goal": goal, "met": None}
        return {"value": round(value, 3), "goal": goal, "met": value >= goal if better == "higher" else value <= goal}

    gs = result.get("gsplat", {})
    return {
        "input_qualifies": qualifies,
        "distwar_policy": distwar.get("policy"),
        "best_distwar_by_kernel": best.get("policy"),
        "kernel_speedup": target(distwar.get("speedup_kernel"), TARGET_KERNEL_SPEEDUP, "higher"),
        "kernel_vs_floor": target(distwar.get("kernel_vs_floor"), TARGET_KERNEL_VS_FLOOR, "lower"),
        "train_iter_speedup": target(distwar.get("speedup_train_iter"), TARGET_TRAIN_SPEEDUP, "higher"),
        "faster_than_gsplat": target(gs.get("speedup_vs_gsplat"), 1.0, "higher"),
    }


def write_json(result: dict, path: Path) -> Path:
    return atomic_write_json(path, result)


def write_csv(rows: list, path: Path) -> Path:
    import io
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        flat = dict(r)
        if flat.get("errors"):
            flat["errors"] = " | ".join(flat["errors"])
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in flat.items()})
    return atomic_write_text(path, buf.getvalue())


def _cell(v, fmt="{:.3f}") -> str:
    if v is None:
        return "-"
    return fmt.format(v) if isinstance(v, (int, float)) else str(v)


def table(rows: list) -> str:
    """A fixed-width table of the rows (ms medians, speed-ups over baseline, peak memory)."""
    head = ("policy", "kernel ms", "x base", "x floor", "backward ms", "x base", "forward ms", "iter ms", "x base",
            "peak MiB")
    lines = [head]
    for r in rows:
        peak = r.get("peak_mem_train_mib") or r.get("peak_mem_fwd_bwd_mib")
        lines.append((r["policy"], _cell(r.get("kernel_ms")), _cell(r.get("speedup_kernel"), "{:.2f}"),
                      _cell(r.get("kernel_vs_floor"), "{:.2f}"), _cell(r.get("backward_ms")),
                      _cell(r.get("speedup_backward"), "{:.2f}"), _cell(r.get("forward_ms")),
                      _cell(r.get("train_iter_ms")), _cell(r.get("speedup_train_iter"), "{:.2f}"),
                      _cell(peak, "{:.0f}") + (" !" if r.get("errors") else "")))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
           for line in lines]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)
