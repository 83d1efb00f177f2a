"""gs-train: train 3D Gaussians on a COLMAP scene (also ``python -m gs_trainer.train``).

    gs-train -s data/tabletop -m runs/tabletop --eval [--config configs/cpu.yaml] [--atomics distwar]

Exit codes: 0 done, 2 bad input (scene, config, checkpoint), 3 the loss became NaN/Inf.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

import torch

from .config import ConfigError, TrainConfig, add_config_arguments, config_from_args, save_config

log = logging.getLogger("gs_trainer")

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gs-train", description="Train 3D Gaussian Splatting on a scene.")
    add_config_arguments(parser)
    from .viewer.cli import add_server_arguments
    view = parser.add_argument_group("live viewer (not part of the run's config)")
    view.add_argument("--viewer", action="store_true", help="show the scene in a web browser while it trains")
    add_server_arguments(view, prefix="viewer_")
    return parser


def parse_config(argv: Optional[list[str]] = None) -> TrainConfig:
    """Command line -> resolved TrainConfig (device and model_path filled in)."""
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if not cfg.run.device:
        cfg.run.device = "cuda" if torch.cuda.is_available() else "cpu"
    if not cfg.model.model_path:
        cfg.model.model_path = str(Path("output") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    if not cfg.model.source_path:
        raise ConfigError("no scene given: pass -s/--source_path (a COLMAP scene folder)")
    if cfg.run.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.run.device} was asked for but torch sees no CUDA GPU")
    return cfg


def setup_logging(quiet: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def load_scene(cfg: TrainConfig):
    from .data.dataset import Scene
    m = cfg.model
    return Scene(m.source_path, images=m.images, resolution=m.resolution, eval=m.eval,
                 white_background=m.white_background, device=cfg.run.device,
                 cache_dir=str(Path(m.model_path) / "cache"))


def run(cfg: TrainConfig, viewer: Optional[argparse.Namespace] = None) -> dict:
    """Build everything from a resolved config and train; returns the final evaluation."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .trainer import Trainer
    from .utils_io import torch_load
    from .utils_run import RunFolder, configure_torch

    configure_torch(cfg.run)
    started = time.perf_counter()
    scene = load_scene(cfg)
    log.info("scene %s: %d training and %d test views, %d points, extent %.3f", cfg.model.source_path,
             len(scene.train_cameras), len(scene.test_cameras), len(scene.points), scene.extent)
    folder = RunFolder(cfg.model.model_path, tensorboard=cfg.run.tensorboard)
    save_config(cfg, folder.config_path)
    folder.save_cameras(list(scene.test_cameras) + list(scene.train_cameras))
    trainer = Trainer(cfg, scene, folder, device=cfg.run.device)
    if cfg.run.start_checkpoint:
        path = Path(cfg.run.start_checkpoint)
        if not path.is_file():
            raise ConfigError(f"--start_checkpoint {path}: file not found")
        try:
            trainer.load_state(torch_load(path, map_location=cfg.run.device))
        except (KeyError, ValueError, RuntimeError) as err:
            raise ConfigError(f"--start_checkpoint {path}: not a usable checkpoint ({err})") from None
        trainer.last_checkpoint = str(path)
        log.info("resumed from %s at iteration %d", path, trainer.iteration)
    log.info("training %d iterations on %s, output in %s", cfg.optim.iterations, cfg.run.device, folder.path)
    live = None
    try:
        if viewer is not None and viewer.viewer:
            live = start_live_viewer(trainer, viewer)
        with logging_redirect_tqdm():
            results = trainer.train()
    finally:
        folder.close()
        if live is not None:
            live.close()
            log.info("the live viewer closed with training; gs-view -m %s shows the result", folder.path)
    minutes = (time.perf_counter() - started) / 60
    test = results.get("test")
    if test:
        log.info("done in %.1f min: test PSNR %.2f dB, SSIM %.4f (%d Gaussians)", minutes, test["psnr"],
                 test["ssim"], trainer.model.num_gaussians)
    else:
        log.info("done in %.1f min (%d Gaussians; pass --eval to hold out test views)", minutes,
                 trainer.model.num_gaussians)
    return results


def start_live_viewer(trainer, args: argparse.Namespace):
    from .viewer.live import LiveViewer

    try:
        live = LiveViewer(trainer, host=args.viewer_host, port=args.viewer_port,
                          max_resolution=args.viewer_max_resolution,
                          preview_resolution=args.viewer_preview_resolution)
    except OSError as err:
        raise ConfigError(f"--viewer_host {args.viewer_host}: cannot listen there ({err})") from None
    trainer.on_step = live.on_step
    print(f"gs-train: live viewer at {live.url}", flush=True)
    return live


def main(argv: Optional[list[str]] = None) -> int:
    from .data.errors import SceneError
    from .model import PlyError
    from .trainer import TrainingDiverged

    try:
        cfg = parse_config(argv)
        args = build_parser().parse_args(argv)
        if args.viewer:
            from .viewer.cli import check_server_arguments, require_viser
            problem = check_server_arguments(args.viewer_port, args.viewer_max_resolution,
                                             args.viewer_preview_resolution, prefix="viewer_") or require_viser()
            if problem:
                raise ConfigError(problem)
    except ConfigError as err:
        print(f"gs-train: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    setup_logging(cfg.run.quiet)
    try:
        run(cfg, args)
    except (SceneError, ConfigError, PlyError) as err:
        print(f"gs-train: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingDiverged as err:
        print(f"gs-train: error: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    return 0


if __name__ == "__main__":
    sys.exit(main())
