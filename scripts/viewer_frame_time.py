"""The viewer's frame time: gs-view on a run, seen by headless Chromium, camera moved between views.

    python scripts/viewer_frame_time.py -m RUN [--width 1280 --height 720] [--views 6] [--max_resolution 1024]

Opens the viewer in headless Chromium (Debian's ``chromium``) with a window of the given size, jumps the
browser's camera through ``--views`` training views, and reports the render time of every preview and full
frame (median per kind, with their sizes and the backend).  The time is that of the rasterizer call in the
render thread (the JPEG encoding and the sending are not in it).  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-m", "--model_path", required=True)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--views", type=int, default=6)
    p.add_argument("--max_resolution", type=int, default=1024)
    p.add_argument("--preview_resolution", type=int, default=256)
    args = p.parse_args()

    import torch
    from browser import Browser
    from gs_trainer.viewer.cli import start_viewer

    viewer, iteration = start_viewer(["-m", args.model_path, "--port", "0", "--quiet", "--max_resolution",
                                      str(args.max_resolution), "--preview_resolution", str(args.preview_resolution)])
    try:
        with Browser(args.width, args.height) as browser:
            browser.goto(viewer.url)
            deadline = time.monotonic() + 600
            while not (viewer.last_frame() and viewer.last_frame().full):
                assert time.monotonic() < deadline, "no first frame"
                time.sleep(0.1)
            client = next(iter(viewer.server.get_clients().values()))
            train = viewer.views["train"]
            for k in range(1, args.views + 1):
                sent = viewer.frames_sent
                viewer.select_view(client, "train", (k * 5) % len(train), compare=False)
                while not (viewer.frames_sent > sent and viewer.last_frame().full
                           and viewer.last_frame().key[0] == viewer._states[client.client_id].camera_version):
                    assert time.monotonic() < deadline, "no full frame"
                    time.sleep(0.05)
            times = viewer.frame_times()
    finally:
        viewer.close()
    model = viewer.source.model
    out = {"run": args.model_path, "iteration": iteration, "gaussians": int(model.num_gaussians),
           "device": str(model.means.device), "torch_threads": torch.get_num_threads(),
           "window": [args.width, args.height]}
    for full, kind in ((False, "preview"), (True, "full")):
        rows = [t for t in times if t[0] == full]
        if rows:
            out[kind] = {"frames": len(rows), "size": [rows[-1][1], rows[-1][2]],
                         "median_ms": statistics.median(t[3] for t in rows),
                         "min_ms": min(t[3] for t in rows), "max_ms": max(t[3] for t in rows)}
    out["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
