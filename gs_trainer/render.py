"""gs-render: render a trained run's views (and optionally an orbit video).

    gs-render -m runs/tabletop [--iteration N] [--skip_train] [--skip_test] [--eval] [--orbit]
    gs-render -m runs/tabletop --split test          # this project's spelling of --skip_train

Writes RUN/<split>/ours_N/renders/00000.png beside RUN/<split>/ours_N/gt/00000.png (the original's
layout), for the train and the test views by default, as the original's render.py does; ``--orbit`` adds
RUN/orbit/ours_N/frames/*.png and RUN/orbit/ours_N/orbit.mp4.

A run folder of the original trainer opens too: its ``cfg_args`` (parsed, never evaluated) gives the scene
and the split, ``point_cloud/iteration_N/point_cloud.ply`` the Gaussians; ``-s`` says where the scene is
when it has moved since training.

Options: ``-r R`` renders at another resolution; ``--depth`` adds depth/ (16-bit PNG, step in
depth/scale.json) and depth_vis/ (colour map), ``--alpha`` adds alpha/ (accumulated opacity); the orbit video
is H.264, yuv420p (orbit.webm, VP9, where H.264 cannot be written), with ``--orbit_frames``,
``--orbit_resolution`` and ``--fps``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cuda_rasterizer import BACKENDS

from .config import ConfigError, TrainConfig, load_config

log = logging.getLogger("gs_trainer")

EXIT_BAD_INPUT = 2
ORBIT_FRAMES = 120
ORBIT_FPS = 30


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gs-render", description="Render a trained run's views.")
    p.add_argument("-m", "--model_path", required=True,
                   help="run folder written by gs-train or by the original trainer")
    p.add_argument("--iteration", type=int, default=-1, help="saved iteration to render (-1 = the last)")
    p.add_argument("--split", choices=("train", "test", "all"), default="all",
                   help="views to render (default: all, i.e. train and test, as the original)")
    p.add_argument("--skip_train", action="store_true", help="do not render the training views (the original's flag)")
    p.add_argument("--skip_test", action="store_true", help="do not render the test views (the original's flag)")
    p.add_argument("--eval", action="store_true",
                   help="hold out every 8th view as the test split even if the run was trained without --eval")
    p.add_argument("--orbit", action="store_true", help="also render a smooth camera path as MP4 + frames")
    p.add_argument("--orbit_frames", type=int, default=ORBIT_FRAMES, help="frames in the orbit video")
    p.add_argument("--orbit_resolution", type=int, default=None,
                   help="orbit frame size, with -r's rule applied to the views' size (1, 2, 4, 8 = downscale "
                        "factor, larger = width in pixels); default: the views' size; sides rounded down to even")
    p.add_argument("--fps", type=int, default=ORBIT_FPS, help="orbit video frame rate")
    p.add_argument("-r", "--resolution", type=int, default=None,
                   help="render views at this resolution, -r's rule of gs-train (1, 2, 4, 8 = downscale factor "
                        "of the source images, larger = width in pixels); default: the run's")
    p.add_argument("--depth", action="store_true",
                   help="also write each view's expected depth: depth/ (16-bit PNG) and depth_vis/ (colour map)")
    p.add_argument("--alpha", action="store_true", help="also write each view's accumulated opacity to alpha/")
    p.add_argument("-s", "--source_path", default=None, help="override the scene path stored in the run")
    p.add_argument("--device", default=None, help="default: the run's device if available, else cpu")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="rasterizer backend (auto, cuda, cpu, reference); default: the run's")
    p.add_argument("--quiet", action="store_true")
    return p


def load_run_config(run: Path) -> tuple[TrainConfig, Path]:
    """The run's config and the file it came from: config.yaml (gs-train) or cfg_args (the original)."""
    from .cfg_args import CFG_ARGS, config_from_cfg_args

    cfg_path = run / "config.yaml"
    if cfg_path.is_file():
        return load_config(cfg_path), cfg_path
    if (run / CFG_ARGS).is_file():
        return config_from_cfg_args(run / CFG_ARGS), run / CFG_ARGS
    raise ConfigError(f"{run}: no config.yaml (gs-train) or {CFG_ARGS} (the original trainer) here; "
                      f"is this a run folder?")


def load_run(model_path: str, iteration: int = -1, device: Optional[str] = None):
    """(config, model, iteration, device) of a run folder; ConfigError/PlyError with a clear message."""
    from .model import GaussianModel
    from .utils_run import saved_iterations

    run = Path(model_path)
    cfg, _ = load_run_config(run)
    available = saved_iterations(run)
    if not available:
        raise ConfigError(f"{run}: no point_cloud/iteration_N/point_cloud.ply saved yet")
    if iteration < 0:
        iteration = available[-1]
    elif iteration not in available:
        raise ConfigError(f"{run}: iteration {iteration} was not saved (saved: {available})")
    if device is None:
        wanted = cfg.run.device or "cuda"
        device = wanted if (wanted.startswith("cpu") or torch.cuda.is_available()) else "cpu"
    model = GaussianModel.load_ply(run / "point_cloud" / f"iteration_{iteration}" / "point_cloud.ply", device)
    return cfg, model, iteration, device


def save_png(path: Path, image: torch.Tensor) -> None:
    import cv2
    from .utils_io import atomic_write

    rgb = (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    ok, buf = cv2.imencode(".png", rgb[:, :, ::-1])
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    atomic_write(path, lambda f: f.write(buf.tobytes()))


class DepthUnavailable(RuntimeError):
    """The chosen rasterizer backend returned no depth (the built-in ones all compute it; a backend added with
    cuda_rasterizer.register_stage_backend may not)."""


@torch.no_grad()
def render_split(cfg: TrainConfig, model, cameras, out_dir: Path, device, *, depth_step: Optional[float] = None,
                 alpha: bool = False) -> int:
    """Render ``cameras`` to out_dir/renders (+ gt); with ``depth_step`` also depth/ and depth_vis/, with
    ``alpha`` also alpha/.  Raises DepthUnavailable before writing anything when the backend has no depth."""
    from tqdm import tqdm
    from . import depth_maps
    from .renderer import render

    bg = torch.tensor([1.0, 1.0, 1.0] if cfg.model.white_background else [0.0, 0.0, 0.0], device=device)
    for index, cam in enumerate(tqdm(cameras, desc=f"rendering {out_dir.parent.name}/{out_dir.name}",
                                     disable=cfg.run.quiet)):
        out = render(model, cam, bg, atomics=cfg.run.atomics, balance_threshold=cfg.run.balance_threshold,
                     backend=cfg.run.backend)
        if depth_step is not None and out.depth is None:
            raise DepthUnavailable(f"--depth: the rasterizer backend ({cfg.run.backend}) returned no depth image; "
                                   "the built-in backends (cuda, cpu, reference) compute it: pass --backend with "
                                   "one of them")
        image = out.image
        if getattr(cam, "alpha_mask", None) is not None:
            image = image * cam.alpha_mask
        name = f"{index:05d}.png"
        if depth_step is not None:
            if index == 0:
                depth_maps.save_depth_scale(out_dir, depth_step)
            depth_maps.save_depth(out_dir, name, out.depth, out.final_T, depth_step)
        if alpha:
            depth_maps.save_alpha(out_dir, name, out.final_T)
        save_png(out_dir / "renders" / f"{index:05d}.png", image)
        if cam.image is not None:
            save_png(out_dir / "gt" / f"{index:05d}.png", cam.image)
    return len(cameras)


def orbit_cameras(cameras, num_frames: int):
    """A smooth closed path through the scene: an ellipse fitted to the camera centres (in the plane
    orthogonal to their mean up vector), every frame looking at the point nearest to all optical axes."""
    from .data.cameras import Camera
    from .utils_synthetic import look_at

    centers = np.stack([c.camera_center_np for c in cameras])
    axes = np.stack([np.asarray(c.R)[2] for c in cameras])        # optical axes (world), camera z rows
    up = -np.mean(np.stack([np.asarray(c.R)[1] for c in cameras]), axis=0)   # COLMAP y points down
    up /= np.linalg.norm(up)
    # focus: least-squares point closest to every optical axis
    eye = np.eye(3)
    a = sum(eye - np.outer(d, d) for d in axes)
    b = sum((eye - np.outer(d, d)) @ c for d, c in zip(axes, centers))
    target = np.linalg.lstsq(a, b, rcond=None)[0]
    mean = centers.mean(axis=0)
    flat = (centers - mean) - np.outer((centers - mean) @ up, up)
    _, sv, vt = np.linalg.svd(flat, full_matrices=False)
    radii = np.sqrt(2.0) * sv[:2] / np.sqrt(len(centers))         # a ring of points has std = r / sqrt(2)
    ref = cameras[0]
    path = []
    for i in range(num_frames):
        t = 2 * np.pi * i / num_frames
        pos = mean + radii[0] * np.cos(t) * vt[0] + radii[1] * np.sin(t) * vt[1]
        rot, trans = look_at(pos, target, world_up=up)
        path.append(Camera(i, f"orbit_{i:05d}", ref.width, ref.height, ref.fx, ref.fy, ref.cx, ref.cy, rot, trans))
    return path


def chosen_splits(args) -> tuple[str, ...]:
    splits = ("train", "test") if args.split == "all" else (args.split,)
    return tuple(s for s in splits if not (s == "train" and args.skip_train) and not (s == "test" and args.skip_test))


def check_scene(run: Path, cfg: TrainConfig, described_by: Path, given: Optional[str]) -> Optional[int]:
    """The scene must exist; returns how many views the run's cameras.json lists (None: no such file)."""
    import json

    source = Path(cfg.model.source_path)
    if not source.is_dir():
        where = "-s" if given else f"{described_by} (source_path)"
        raise ConfigError(f"{where}: scene folder {source} not found; pass -s where the scene is now")
    cams = run / "cameras.json"
    if cams.is_file():
        try:
            entries = json.loads(cams.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ConfigError(f"{cams}: not readable JSON ({err})") from None
        if not isinstance(entries, list):
            raise ConfigError(f"{cams}: expected a list of cameras")
        return len(entries)
    return None


def main(argv: Optional[list[str]] = None) -> int:
    from .data.errors import SceneError
    from .model import PlyError
    from .train import load_scene, setup_logging
    from .utils_run import configure_torch

    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    splits = chosen_splits(args)
    if not splits and not args.orbit:
        print("gs-render: error: --split/--skip_train/--skip_test leave nothing to render", file=sys.stderr)
        return EXIT_BAD_INPUT
    run = Path(args.model_path)
    for flag, value in (("-r/--resolution", args.resolution), ("--orbit_resolution", args.orbit_resolution)):
        if value is not None and not (value in (-1, 1, 2, 4, 8) or value > 8):
            print(f"gs-render: error: {flag} {value}: must be -1, 1, 2, 4, 8 or a width in pixels > 8", file=sys.stderr)
            return EXIT_BAD_INPUT
    if args.orbit_frames < 1 or args.fps < 1:
        print("gs-render: error: --orbit_frames and --fps must be at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        cfg, model, iteration, device = load_run(args.model_path, args.iteration, args.device)
        _, described_by = load_run_config(run)
        cfg.run.quiet = cfg.run.quiet or args.quiet
        configure_torch(cfg.run)
        if args.source_path:
            cfg.model.source_path = args.source_path
        if args.eval:
            cfg.model.eval = True
        cfg.run.device = device
        if args.backend:
            cfg.run.backend = args.backend
        cfg.model.model_path = args.model_path
        expected = check_scene(run, cfg, described_by, args.source_path)
        if args.resolution is not None:
            cfg.model.resolution = args.resolution
        scene = load_scene(cfg)
        found = len(scene.train_cameras) + len(scene.test_cameras)
        if expected is not None and expected != found:
            where = "-s " + args.source_path if args.source_path else str(cfg.model.source_path)
            raise ConfigError(f"{run / 'cameras.json'}: the run was trained on {expected} views, but {where} "
                              f"has {found}; is this the scene the run was trained on?")
    except (ConfigError, PlyError, SceneError) as err:
        print(f"gs-render: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for split in splits:
        cams = scene.test_cameras if split == "test" else scene.train_cameras
        if not cams:
            if split == "test":
                (log.warning if args.split == "test" else log.info)(
                    "no test views: the run was trained without --eval (pass --eval to hold out every 8th view)")
            continue
        out = run / split / f"ours_{iteration}"
        step = None
        if args.depth:
            from .depth_maps import depth_step
            step = depth_step(cams, scene.points)
        try:
            render_split(cfg, model, cams, out, device, depth_step=step, alpha=args.alpha)
        except DepthUnavailable as err:
            print(f"gs-render: error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        log.info("rendered %d %s views to %s", len(cams), split, out)
    if args.orbit:
        out = run / "orbit" / f"ours_{iteration}"
        path = orbit_cameras(list(scene.train_cameras) + list(scene.test_cameras), args.orbit_frames)
        size = (path[0].width, path[0].height)
        if args.orbit_resolution is not None:
            from .data.images import target_size
            size = target_size(size[0], size[1], args.orbit_resolution)
        from .video import even_size, write_video
        size = even_size(*size)
        path = [c if (c.width, c.height) == size else c.scaled(*size) for c in path]
        bg = torch.tensor([1.0, 1.0, 1.0] if cfg.model.white_background else [0.0, 0.0, 0.0], device=device)
        from .renderer import render
        from .viewer.server import to_uint8
        from tqdm import tqdm
        frames = []
        with torch.no_grad():
            for cam in tqdm(path, desc="orbit", disable=cfg.run.quiet):
                image = render(model, cam, bg, atomics=cfg.run.atomics, balance_threshold=cfg.run.balance_threshold,
                               backend=cfg.run.backend).image
                save_png(out / "frames" / f"{cam.uid:05d}.png", image)
                frames.append(to_uint8(image))
        video = write_video(frames, out / "orbit", fps=args.fps)
        if video is not None:
            log.info("orbit video (%dx%d, %d frames): %s", size[0], size[1], len(frames), video)
        else:
            log.warning("no orbit video could be encoded; the frames are in %s", out / "frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
