"""gs-bench: backward-pass timings per accumulation policy, the no-atomics floor, the lane profile and a
side-by-side with gsplat.  `cli` is the entry point; `scene` builds the benchmark scenes, `policies` times
each policy, `timing` holds the CUDA-event timer, `report` and `plot` write the results."""

from .cli import main

__all__ = ["main"]
