"""gs-train: train 3D Gaussians on a COLMAP scene (also ``python -m gs_trainer.train``).

    gs-train -s data/tabletop -m runs/tabletop --eval [--config configs/cpu.yaml] [--atomics distwar]

Every input (config, run folder, checkpoint, scene) is checked before anything is written into the run
folder, so a command that fails leaves an existing run as it was.  A folder that already holds a run is
only written into to resume it (``--start_checkpoint``, same scene) or with ``--overwrite``.

Ctrl-C (SIGINT) or SIGTERM finishes the current iteration, writes a checkpoint and prints the command
that resumes; a second signal stops at once.

Exit codes: 0 done, 2 bad input (scene, config, checkpoint, run folder), 3 the loss became NaN/Inf,
130 / 143 stopped by SIGINT / SIGTERM, 4 (torchrun) another rank died or stopped answering within
--dist_timeout.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

import torch

from .config import (ConfigError, OneLineArgumentParser, TrainConfig, add_config_arguments, config_from_args,
                     load_yaml, save_config)

log = logging.getLogger("gs_trainer")

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_RANK_LOST = 4
#: files and folders that mark a folder as holding a run (ours or the original trainer's)
RUN_MARKERS = ("config.yaml", "cfg_args", "cameras.json", "point_cloud", "chkpnt*.pth", "events.out.tfevents.*")


class Interrupted(BaseException):
    """SIGINT / SIGTERM outside the training loop (or a second one inside it): stop at once."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="gs-train", description="Train 3D Gaussian Splatting on a scene.")
    add_config_arguments(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a -m folder that already holds another run (refused otherwise)")
    from .viewer.cli import add_server_arguments
    view = parser.add_argument_group("live viewer (not part of the run's config)")
    view.add_argument("--viewer", action="store_true", help="show the scene in a web browser while it trains")
    add_server_arguments(view, prefix="viewer_")
    return parser


def parse_config(argv: Optional[list[str]] = None) -> TrainConfig:
    """Command line -> resolved TrainConfig (device and model_path filled in)."""
    return parse_args(argv)[0]


def parse_args(argv: Optional[list[str]] = None) -> tuple[TrainConfig, argparse.Namespace]:
    """Command line -> (resolved TrainConfig, the parsed flags)."""
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if not cfg.run.device:
        cfg.run.device = "cuda" if torch.cuda.is_available() else "cpu"
    if not cfg.model.model_path:
        cfg.model.model_path = str(Path("output") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    if not cfg.model.source_path:
        raise ConfigError("no scene given: pass -s/--source_path (a COLMAP scene folder)")
    cfg.model.source_path = os.path.abspath(cfg.model.source_path)   # the run opens from any directory
    if cfg.run.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.run.device} was asked for but torch sees no CUDA GPU")
    return cfg, args


def atomics_chosen(args: argparse.Namespace) -> bool:
    """Whether the user chose --atomics (on the command line or in the --config preset)."""
    if "atomics" in vars(args):
        return True
    preset = getattr(args, "config", None)
    if preset:
        data = load_yaml(preset)
        return "atomics" in data or "atomics" in (data.get("run") or {})
    return False


def setup_logging(quiet: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def load_scene(cfg: TrainConfig):
    from .data.dataset import Scene
    m = cfg.model
    return Scene(m.source_path, images=m.images, resolution=m.resolution, eval=m.eval,
                 white_background=m.white_background, device=cfg.run.device,
                 cache_dir=str(Path(m.model_path) / "cache"))


def holds_run(folder: Path) -> bool:
    return folder.is_dir() and any(any(folder.glob(marker)) for marker in RUN_MARKERS)


def same_scene(a: str, b: str) -> bool:
    try:
        return bool(a) and Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def check_run_folder(cfg: TrainConfig, overwrite: bool) -> None:
    """-m must be a folder we may write, and not one holding another run (unless --overwrite)."""
    folder = Path(cfg.model.model_path)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"-m {folder}: exists and is not a folder (the run folder must be a directory)")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"-m {folder}: {existing} is not a folder, the run folder cannot be created there")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "the run folder is not writable" if existing == folder else \
            f"cannot create the run folder, {existing} is not writable"
        raise ConfigError(f"-m {folder}: {where}")
    if overwrite or not holds_run(folder):
        return
    config = folder / "config.yaml"
    try:
        previous = load_yaml(config).get("model", {}).get("source_path", "") if config.is_file() else ""
    except (ConfigError, AttributeError):
        previous = ""
    if cfg.run.start_checkpoint and same_scene(previous, cfg.model.source_path):
        return   # resuming this run
    what = f"a run of {previous}" if previous else "a run"
    if cfg.run.start_checkpoint and previous:
        reason = f"holds {what}, not of -s {cfg.model.source_path}"
    else:
        reason = f"already holds {what}"
    raise ConfigError(f"-m {folder}: {reason}; pass --overwrite to write into it anyway, --start_checkpoint "
                      f"to resume it, or choose another -m")


def read_checkpoint(cfg: TrainConfig):
    """Load --start_checkpoint and check what needs no scene; ConfigError (one line) if unusable."""
    from .trainer import checkpoint_problem
    from .utils_io import CheckpointError, torch_load

    path = Path(cfg.run.start_checkpoint)
    if not path.is_file():
        raise ConfigError(f"--start_checkpoint {path}: " + ("is a folder, not a checkpoint file" if path.is_dir()
                                                             else "file not found"))
    try:
        state = torch_load(path, map_location=cfg.run.device)
    except (CheckpointError, OSError) as err:
        raise ConfigError(f"--start_checkpoint {path}: not a usable checkpoint: {err}") from None
    problem = checkpoint_problem(state, cfg)
    if problem:
        raise ConfigError(f"--start_checkpoint {path}: cannot resume: {problem}")
    return state


def build_trainer(cfg: TrainConfig, state):
    """Scene and trainer (resumed from ``state`` if given), writing nothing into the run folder.

    Loading a scene with distorted cameras caches undistorted images in RUN/cache; if anything fails,
    what that created is removed again.
    """
    from .trainer import Trainer

    folder = Path(cfg.model.model_path)
    created = folder if not folder.exists() else folder / "cache" if not (folder / "cache").exists() else None
    try:
        scene = load_scene(cfg)
        trainer = Trainer(cfg, scene, None, device=cfg.run.device)
        if state is not None:
            try:
                trainer.load_state(state)
            except (KeyError, ValueError, RuntimeError, TypeError) as err:
                text = " ".join(str(err).split())
                raise ConfigError(f"--start_checkpoint {cfg.run.start_checkpoint}: cannot resume: {text}") from None
    except BaseException:
        if created is not None and created.exists():
            shutil.rmtree(created, ignore_errors=True)
        raise
    return trainer


def open_run_folder(cfg: TrainConfig):
    from .utils_run import RunFolder
    try:
        return RunFolder(cfg.model.model_path, tensorboard=cfg.run.tensorboard)
    except OSError as err:
        raise ConfigError(f"-m {cfg.model.model_path}: cannot write the run folder ({err.strerror or err})") from None


class StopSignals:
    """SIGINT / SIGTERM handling: outside training stop at once; during training, ask the trainer to stop
    after the current iteration (it then writes a checkpoint); a second signal stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.trainer = None
        self.previous = {}

    def __enter__(self) -> "StopSignals":
        import threading
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum, frame) -> None:
        if self.trainer is not None and self.trainer.stop_requested is None:
            self.trainer.stop_requested = signum
            log.info("%s: finishing iteration %d and saving a checkpoint (send it again to stop at once)",
                     signal.Signals(signum).name, self.trainer.iteration + 1)
            return
        raise Interrupted(signum)


def resume_command(argv: Optional[list[str]], checkpoint: str) -> str:
    """The command line that resumes: the same flags, --start_checkpoint replaced by ``checkpoint``."""
    args = list(sys.argv[1:] if argv is None else argv)
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--start_checkpoint":
            skip = True
            continue
        if arg.startswith("--start_checkpoint=") or arg == "--overwrite":
            continue
        kept.append(arg)
    return shlex.join(["gs-train", *kept, "--start_checkpoint", checkpoint])


def run(cfg: TrainConfig, *, overwrite: bool = False, atomics_given: bool = False,
        signals: Optional[StopSignals] = None, viewer: Optional[argparse.Namespace] = None) -> dict:
    """Check every input, then build everything from a resolved config and train; returns the final
    evaluation (``viewer``: gs-train's --viewer flags).  Nothing is written into the run folder before all inputs have been checked."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .renderer import note_atomics
    from .utils_io import remove_temporaries
    from .utils_run import configure_torch

    from .distributed.comm import launched_distributed

    check_run_folder(cfg, overwrite)
    state = read_checkpoint(cfg) if cfg.run.start_checkpoint else None
    if launched_distributed():   # under torchrun: the Gaussians are sharded over the ranks
        from .distributed.launch import run_distributed
        del state                # each rank reads its own shard of it
        return run_distributed(cfg)
    configure_torch(cfg.run)
    started = time.perf_counter()
    trainer = build_trainer(cfg, state)
    scene = trainer.scene
    if atomics_given:
        note_atomics(cfg.run.device, cfg.run.atomics)
    remove_temporaries(cfg.model.model_path)
    folder = open_run_folder(cfg)
    live = None
    try:
        save_config(cfg, folder.config_path)
        folder.save_cfg_args(cfg)                     # for the original's viewer and scripts
        folder.save_input_ply(scene.points, scene.colors)
        folder.save_cameras(list(scene.test_cameras) + list(scene.train_cameras))
        trainer.sink = folder
        if state is not None:
            trainer.last_checkpoint = cfg.run.start_checkpoint
            log.info("resumed from %s at iteration %d", cfg.run.start_checkpoint, trainer.iteration)
        if signals is not None:
            signals.trainer = trainer
        log.info("training %d iterations on %s, output in %s", cfg.optim.iterations, cfg.run.device, folder.path)
        if viewer is not None and viewer.viewer:
            live = start_live_viewer(trainer, viewer)
        with logging_redirect_tqdm():
            results = trainer.train()
    finally:
        if signals is not None:
            signals.trainer = None
        folder.close()
        remove_temporaries(folder.path)
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


def _exit_with_a_broken_group(code: int) -> None:
    """Leave now, with ``code``, when this process still holds a process group that lost a rank: tearing it
    down at interpreter exit can hit a gloo thread still waiting on the dead peer, and std::terminate
    (SIGABRT, exit -6 instead of ``code``; seen about once in 6 runs of the dead-rank test)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: Optional[list[str]] = None) -> int:
    from .data.errors import SceneError
    from .distributed.comm import RankLost
    from .model import PlyError
    from .trainer import TrainingDiverged, TrainingInterrupted

    try:
        cfg, args = parse_args(argv)
        atomics_given = atomics_chosen(args)
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
    with StopSignals() as signals:
        try:
            run(cfg, overwrite=args.overwrite, atomics_given=atomics_given, signals=signals, viewer=args)
        except (SceneError, ConfigError, PlyError) as err:
            print(f"gs-train: error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except TrainingDiverged as err:
            print(f"gs-train: error: {err}", file=sys.stderr)
            return EXIT_DIVERGED
        except RankLost as err:
            print(f"gs-train: error: {err}", file=sys.stderr)
            _exit_with_a_broken_group(EXIT_RANK_LOST)
            return EXIT_RANK_LOST
        except TrainingInterrupted as stop:
            name = signal.Signals(stop.signum).name
            print(f"gs-train: {name}: stopped after iteration {stop.iteration}, checkpoint {stop.checkpoint}; "
                  f"resume with: {resume_command(argv, stop.checkpoint)}", file=sys.stderr)
            return 128 + stop.signum
        except (Interrupted, KeyboardInterrupt) as stop:
            signum = getattr(stop, "signum", signal.SIGINT)
            print(f"gs-train: {signal.Signals(signum).name}: stopped at once, no checkpoint was written",
                  file=sys.stderr)
            return 128 + signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
