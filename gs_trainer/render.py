"""gs-render: render a trained run's views (and optionally an orbit video).

    gs-render -m runs/tabletop [--iteration N] [--skip_train] [--skip_test] [--eval] [--orbit]
    gs-render -m runs/tabletop --split test          # this project's spelling of --skip_train

Writes RUN/<split>/ours_N/renders/00000.png beside RUN/<split>/ours_N/gt/00000.png (the original's
layout), for the train and the test views by default, as the original's render.py does; ``--orbit`` adds
RUN/orbit/ours_N/frames/*.png and RUN/orbit/ours_N/orbit.mp4.

A run folder of the original trainer opens too: its ``cfg_args`` (parsed, never evaluated) gives the scene
and the split, ``point_cloud/iteration_N/point_cloud.ply`` the Gaussians; ``-s`` says where the scene is
when it has moved since training.
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
    p.add_argument("--orbit_frames", type=int, default=ORBIT_FRAMES)
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


@torch.no_grad()
def render_split(cfg: TrainConfig, model, cameras, out_dir: Path, device) -> int:
    from tqdm import tqdm
    from .renderer import render

    bg = torch.tensor([1.0, 1.0, 1.0] if cfg.model.white_background else [0.0, 0.0, 0.0], device=device)
    for index, cam in enumerate(tqdm(cameras, desc=f"rendering {out_dir.parent.name}/{out_dir.name}",
                                     disable=cfg.run.quiet)):
        image = render(model, cam, bg, atomics=cfg.run.atomics, balance_threshold=cfg.run.balance_threshold,
                       backend=cfg.run.backend).image
        if getattr(cam, "alpha_mask", None) is not None:
            image = image * cam.alpha_mask
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


def write_video(frames_dir: Path, video_path: Path, fps: int = ORBIT_FPS) -> bool:
    import cv2

    frames = sorted(frames_dir.glob("*.png"))
    if not frames:
        return False
    first = cv2.imread(str(frames[0]))
    h, w = first.shape[:2]
    tmp = video_path.with_name(f".{video_path.stem}.tmp.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        log.warning("OpenCV cannot write MP4 here; the orbit frames are in %s", frames_dir)
        return False
    for f in frames:
        writer.write(cv2.imread(str(f)))
    writer.release()
    tmp.replace(video_path)
    return True


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
        render_split(cfg, model, cams, out, device)
        log.info("rendered %d %s views to %s", len(cams), split, out)
    if args.orbit:
        out = run / "orbit" / f"ours_{iteration}"
        path = orbit_cameras(list(scene.train_cameras) + list(scene.test_cameras), args.orbit_frames)
        bg = torch.tensor([1.0, 1.0, 1.0] if cfg.model.white_background else [0.0, 0.0, 0.0], device=device)
        from .renderer import render
        from tqdm import tqdm
        with torch.no_grad():
            for cam in tqdm(path, desc="orbit", disable=cfg.run.quiet):
                image = render(model, cam, bg, atomics=cfg.run.atomics, balance_threshold=cfg.run.balance_threshold,
                               backend=cfg.run.backend).image
                save_png(out / "frames" / f"{cam.uid:05d}.png", image)
        if write_video(out / "frames", out / "orbit.mp4"):
            log.info("orbit video: %s", out / "orbit.mp4")
    return 0


if __name__ == "__main__":
    sys.exit(main())
