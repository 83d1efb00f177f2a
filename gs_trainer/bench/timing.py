"""Timing and memory helpers of gs-bench: CUDA events on the GPU, perf_counter on the CPU; medians."""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import torch


@dataclass
class Timing:
    """Milliseconds over ``repeats`` timed runs after ``warmup`` untimed ones."""

    median_ms: float
    min_ms: float
    max_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    warmup: int
    clock: str          # "cuda-event" or "perf-counter"

    def to_dict(self) -> dict:
        return asdict(self)


def _quantile(sorted_values: list, q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarise(times_ms: list, warmup: int, clock: str) -> Timing:
    s = sorted(times_ms)
    return Timing(statistics.median(s), s[0], s[-1], _quantile(s, 0.1), _quantile(s, 0.9), len(s), warmup, clock)


def time_op(fn: Callable[[Any], Any], device: torch.device, *, warmup: int, repeats: int,
            setup: Optional[Callable[[], Any]] = None) -> Timing:
    """Median time of ``fn(setup())``; only ``fn`` is inside the timed region.

    On CUDA each run is bracketed by two events recorded on the current stream, so what ``setup`` queues
    (a forward pass before a timed backward, say) is outside the measurement and no host sync happens
    between runs; one synchronize at the end reads every pair.  On the CPU, wall time with perf_counter.
    """
    if repeats < 1:
        raise ValueError(f"time_op: repeats must be >= 1, got {repeats}")
    setup = setup or (lambda: None)
    for _ in range(max(0, warmup)):
        fn(setup())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        pairs = []
        for _ in range(repeats):
            state = setup()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(state)
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize(device)
        return summarise([s.elapsed_time(e) for s, e in pairs], warmup, "cuda-event")
    times = []
    for _ in range(repeats):
        state = setup()
        t0 = time.perf_counter()
        fn(state)
        times.append((time.perf_counter() - t0) * 1e3)
    return summarise(times, warmup, "perf-counter")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> Optional[float]:
    """Peak GPU memory allocated by torch since the last reset (MiB); None on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def process_peak_rss_mib() -> float:
    """Peak resident memory of this process since it started (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
