"""gs-view: look at a trained run in a web browser.

    gs-view -m runs/tabletop [--iteration N] [--port 8080] [--host 127.0.0.1]

Renders with the project's rasterizer (CUDA when the run's device is a GPU, the fastest CPU backend
``auto`` finds otherwise) at the browser's camera.  Exit codes: 0 after Ctrl+C, 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Optional

import torch

from .server import DEFAULT_MAX_RESOLUTION, DEFAULT_PREVIEW_RESOLUTION

log = logging.getLogger("gs_trainer")

EXIT_BAD_INPUT = 2
HOST_HELP = ("interface to listen on (default 127.0.0.1: this machine only).  Anything else, e.g. 0.0.0.0, "
             "lets everyone who can reach this machine on the network see the scene and its training "
             "photos, without a password")


def add_server_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """--port/--host (or --viewer_port/--viewer_host) and the resolution caps, shared with gs-train."""
    p.add_argument(f"--{prefix}port", type=int, default=8080,
                   help="port to listen on (the next free one if taken; 0 = any free port)")
    p.add_argument(f"--{prefix}host", default="127.0.0.1", help=HOST_HELP)
    p.add_argument(f"--{prefix}max_resolution", type=int, default=DEFAULT_MAX_RESOLUTION,
                   help="longer side, in pixels, of the frame rendered once the camera stops")
    p.add_argument(f"--{prefix}preview_resolution", type=int, default=DEFAULT_PREVIEW_RESOLUTION,
                   help="longer side, in pixels, of the frames rendered while the camera moves")


def check_server_arguments(port: int, max_resolution: int, preview_resolution: int, prefix: str = "") -> Optional[str]:
    if not 0 <= port <= 65535:
        return f"--{prefix}port {port}: not a port number (0..65535)"
    for name, value in (("max_resolution", max_resolution), ("preview_resolution", preview_resolution)):
        if value < 16:
            return f"--{prefix}{name} {value}: must be at least 16 pixels"
    return None


def require_viser() -> Optional[str]:
    """None when viser imports, else the line that says how to get it."""
    try:
        import viser  # noqa: F401
    except ImportError as err:
        return f"the viewer needs viser ({err}): pip install 'distwar-gs[view]'"
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gs-view", description="Look at a trained run in a web browser.")
    p.add_argument("-m", "--model_path", required=True, help="run folder written by gs-train")
    p.add_argument("--iteration", type=int, default=-1, help="saved iteration to show (-1 = the last)")
    p.add_argument("-s", "--source_path", default=None, help="override the scene path stored in the run")
    p.add_argument("--device", default=None, help="default: the run's device if available, else cpu")
    add_server_arguments(p)
    p.add_argument("--quiet", action="store_true")
    return p


def start_viewer(argv: Optional[list[str]] = None):
    """Parse, load, start: returns (viewer, iteration) or raises ViewerInputError with one clear line."""
    from ..config import ConfigError
    from ..data.errors import SceneError
    from ..model import PlyError
    from ..render import load_run
    from ..train import load_scene, setup_logging
    from ..utils_run import configure_torch
    from .server import GaussianViewer, StaticSource

    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    problem = check_server_arguments(args.port, args.max_resolution, args.preview_resolution) or require_viser()
    if problem:
        raise ViewerInputError(problem)
    try:
        cfg, model, iteration, device = load_run(args.model_path, args.iteration, args.device)
        configure_torch(cfg.run)
        if args.source_path:
            cfg.model.source_path = args.source_path
        cfg.run.device = device
        cfg.model.model_path = args.model_path
        scene = load_scene(cfg)
    except (ConfigError, PlyError, SceneError) as err:
        raise ViewerInputError(str(err)) from None
    model.active_sh_degree = model.max_sh_degree
    bg = torch.tensor([1.0, 1.0, 1.0] if cfg.model.white_background else [0.0, 0.0, 0.0], device=device)
    try:
        viewer = GaussianViewer(StaticSource(model), scene.train_cameras, scene.test_cameras, bg,
                                host=args.host, port=args.port, max_resolution=args.max_resolution,
                                preview_resolution=args.preview_resolution, atomics=cfg.run.atomics,
                                balance_threshold=cfg.run.balance_threshold,
                                title=f"{args.model_path} @ {iteration}")
    except OSError as err:
        raise ViewerInputError(f"--host {args.host} --port {args.port}: cannot listen there ({err})") from None
    return viewer, iteration


class ViewerInputError(ValueError):
    """Bad input to gs-view; the message names the argument or file."""


def main(argv: Optional[list[str]] = None) -> int:
    try:
        viewer, iteration = start_viewer(argv)
    except ViewerInputError as err:
        print(f"gs-view: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:      # Ctrl+C while the run was still loading
        return 0
    try:
        print(f"gs-view: iteration {iteration} at {viewer.url}  (Ctrl+C to stop)", flush=True)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
