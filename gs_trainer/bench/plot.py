"""Small PNG charts for gs-bench drawn with OpenCV (a project dependency), so the plots always exist.

Three charts: time per policy (one panel per metric, horizontal bars), the distwar balance-threshold
sweep (kernel and backward time against the threshold, the other policies as horizontal lines), and the
lane histogram (share of active warp steps per number of contributing lanes).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (170, 170, 170)
#: BGR colours per policy family.
COLOURS = {"baseline": (60, 60, 200), "warp": (200, 130, 40), "distwar": (60, 160, 60), "tile": (160, 60, 160),
           "floor": (120, 120, 120), "reference": (90, 90, 90)}
FONT_SCALE = 0.45
TEXT_MARGIN = 6  # pixels kept free at the right edge of the image


def _cv2():
    import cv2
    return cv2


def _text(img, s, x, y, scale=FONT_SCALE, colour=BLACK, anchor="left"):
    cv2 = _cv2()
    (w, h), _ = cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    room = img.shape[1] - TEXT_MARGIN - (x if anchor == "left" else 0)
    if anchor == "left" and w > room > 0:      # a long title: shrink it to fit rather than cut it off
        scale *= room / w
        (w, h), _ = cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    if anchor == "right":
        x -= w
    elif anchor == "centre":
        x -= w // 2
    cv2.putText(img, s, (int(x), int(y + h // 2)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * exp >= v:
            return m * exp
    return 10 * exp


def _fmt(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _family(name: str) -> str:
    return name.split("@")[0]


def plot_policies(rows: list, path: Path, title: str) -> Optional[Path]:
    """One panel per metric with a value, horizontal bars per policy, ratio to baseline in the label."""
    metrics = [(m, label) for m, label in (("kernel_ms", "backward render kernel"), ("backward_ms", "whole backward"),
                                           ("forward_ms", "forward"), ("train_iter_ms", "training iteration"))
               if any(r.get(m) for r in rows)]
    if not metrics:
        return None
    cv2 = _cv2()
    names = [r["policy"] for r in rows]
    panel_w, label_w, row_h, top = 330, 110, 22, 60
    height = top + row_h * len(rows) + 50
    img = np.full((height, label_w + panel_w * len(metrics) + 20, 3), 255, np.uint8)
    _text(img, title, 10, 18, 0.55)
    for i, name in enumerate(names):
        _text(img, name, label_w - 8, top + row_h * i + row_h // 2, anchor="right")
    for j, (metric, label) in enumerate(metrics):
        x0 = label_w + panel_w * j
        bar_w = panel_w - 90
        vmax = _nice_max(max((r.get(metric) or 0.0) for r in rows))
        _text(img, f"{label} (ms)", x0 + bar_w // 2, 42, anchor="centre")
        cv2.line(img, (x0, top - 4), (x0, top + row_h * len(rows)), BLACK, 1)
        base = next((r.get(metric) for r in rows if r["policy"] == "baseline"), None)
        for i, r in enumerate(rows):
            v = r.get(metric)
            if not v:
                continue
            y = top + row_h * i
            w = int(bar_w * v / vmax)
            cv2.rectangle(img, (x0, y + 3), (x0 + max(w, 1), y + row_h - 3), COLOURS.get(_family(r["policy"]), GREY), -1)
            label_v = _fmt(v) + (f" ({base / v:.2f}x)" if base and r["policy"] != "baseline" else "")
            _text(img, label_v, x0 + w + 4, y + row_h // 2, 0.38)
        _text(img, "0", x0, top + row_h * len(rows) + 14, 0.38, anchor="centre")
        _text(img, _fmt(vmax), x0 + bar_w, top + row_h * len(rows) + 14, 0.38, anchor="centre")
    _text(img, "(Nx) = speed-up over baseline in the same run", label_w, height - 14, 0.38, GREY)
    cv2.imwrite(str(path), img)
    return path


def plot_threshold_sweep(rows: list, path: Path, title: str) -> Optional[Path]:
    """Kernel (and whole backward) time of distwar against its balance threshold, others as lines."""
    sweep = sorted((r for r in rows if r.get("atomics") == "distwar" and r.get("balance_threshold")),
                   key=lambda r: r["balance_threshold"])
    metric = "kernel_ms" if any(r.get("kernel_ms") for r in sweep) else "backward_ms"
    sweep = [r for r in sweep if r.get(metric)]
    if len(sweep) < 2:
        return None
    cv2 = _cv2()
    others = [r for r in rows if r.get("atomics") != "distwar" and r.get(metric)]
    w, h, left, right, top, bottom = 720, 420, 70, 130, 40, 50
    img = np.full((h, w, 3), 255, np.uint8)
    _text(img, f"{title}: {metric[:-3].replace('_', ' ')} time vs distwar balance threshold", 10, 16, 0.5)
    values = [r[metric] for r in sweep + others]
    vmax = _nice_max(max(values))
    tmin, tmax = 0, 33

    def px(t):
        return int(left + (w - left - right) * (t - tmin) / (tmax - tmin))

    def py(v):
        return int(h - bottom - (h - top - bottom) * v / vmax)

    cv2.rectangle(img, (left, top), (w - right, h - bottom), BLACK, 1)
    for k in range(6):
        v = vmax * k / 5
        cv2.line(img, (left - 4, py(v)), (left, py(v)), BLACK, 1)
        _text(img, _fmt(v), left - 8, py(v), 0.38, anchor="right")
    for t in (1, 4, 8, 12, 16, 20, 24, 28, 32):
        cv2.line(img, (px(t), h - bottom), (px(t), h - bottom + 4), BLACK, 1)
        _text(img, str(t), px(t), h - bottom + 14, 0.38, anchor="centre")
    _text(img, "balance threshold (lanes)", (left + w - right) // 2, h - 14, 0.42, anchor="centre")
    _text(img, "ms", 12, top + 10, 0.42)
    for r in others:
        colour = COLOURS.get(_family(r["policy"]), GREY)
        y = py(r[metric])
        for x in range(left, w - right, 12):
            cv2.line(img, (x, y), (min(x + 6, w - right), y), colour, 1)
        _text(img, f"{r['policy']} {_fmt(r[metric])}", w - right + 6, y, 0.38, colour)
    pts = [(px(r["balance_threshold"]), py(r[metric])) for r in sweep]
    for a, b in zip(pts, pts[1:]):
        cv2.line(img, a, b, COLOURS["distwar"], 2, cv2.LINE_AA)
    for (x, y), r in zip(pts, sweep):
        cv2.circle(img, (x, y), 4, COLOURS["distwar"], -1, cv2.LINE_AA)
        _text(img, _fmt(r[metric]), x, y - 12, 0.35, anchor="centre")
    cv2.imwrite(str(path), img)
    return path


def plot_lane_histogram(hist: list, path: Path, title: str) -> Optional[Path]:
    """Share of active (warp, Gaussian) steps per number of contributing lanes, 1..32."""
    total = sum(hist)
    active = total - hist[0]
    if active <= 0:
        return None
    cv2 = _cv2()
    shares = [hist[c] / active for c in range(1, 33)]
    w, h, left, right, top, bottom = 760, 400, 60, 20, 56, 50
    img = np.full((h, w, 3), 255, np.uint8)
    mean = sum(c * hist[c] for c in range(1, 33)) / active
    _text(img, title, 10, 14, 0.5)
    _text(img, f"{active:,} active warp steps (+{hist[0]:,} with no contributing lane, "
               f"{hist[0] / total:.0%} of all); mean {mean:.1f} lanes per active step", 10, 36, 0.4)
    vmax = _nice_max(max(shares))
    cv2.rectangle(img, (left, top), (w - right, h - bottom), BLACK, 1)
    slot = (w - left - right) / 32
    for c, s in enumerate(shares, start=1):
        x0 = int(left + slot * (c - 1) + 2)
        x1 = int(left + slot * c - 2)
        y = int(h - bottom - (h - top - bottom) * s / vmax)
        cv2.rectangle(img, (x0, y), (x1, h - bottom), COLOURS["distwar"], -1)
        if c in (1, 4, 8, 12, 16, 20, 24, 28, 32):
            _text(img, str(c), (x0 + x1) // 2, h - bottom + 12, 0.38, anchor="centre")
    for k in range(5):
        v = vmax * k / 4
        y = int(h - bottom - (h - top - bottom) * v / vmax)
        cv2.line(img, (left - 4, y), (left, y), BLACK, 1)
        _text(img, f"{100 * v:.3g}%", left - 6, y, 0.36, anchor="right")
    _text(img, "contributing lanes of the warp", (left + w - right) // 2, h - 16, 0.42, anchor="centre")
    cv2.imwrite(str(path), img)
    return path
