"""gs-train under torchrun: join the group, load the scene, let rank 0 own the run folder, train shards.

    torchrun --nproc_per_node=N -m gs_trainer.train -s data/tabletop -m runs/tabletop [--batch_size B]
    torchrun --nnodes=M --node_rank=K --nproc_per_node=N --rdzv_endpoint=HOST:PORT -m gs_trainer.train ...
"""

from __future__ import annotations

import logging
from pathlib import Path

from .comm import barrier, init_comm, shutdown

log = logging.getLogger("gs_trainer")


def run_distributed(cfg) -> dict:
    """The distributed twin of gs_trainer.train.run (same config, same run folder)."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..config import ConfigError, save_config
    from ..train import load_scene
    from ..utils_io import torch_load
    from ..utils_run import RunFolder, configure_torch
    from .trainer import DistributedTrainer

    comm = init_comm(cfg.run.device, cfg.run.dist_timeout)
    cfg.run.device = str(comm.device)
    if not comm.is_main:
        cfg.run.quiet = True               # one progress bar and one log: rank 0's
        logging.getLogger().setLevel(logging.WARNING)
    configure_torch(cfg.run)
    # rank 0 loads first, so that the image cache in the run folder is written once
    scene = load_scene(cfg) if comm.is_main else None
    barrier(comm)
    if scene is None:
        scene = load_scene(cfg)
    folder = None
    if comm.is_main:
        folder = RunFolder(cfg.model.model_path, tensorboard=cfg.run.tensorboard)
        save_config(cfg, folder.config_path)
        folder.save_cfg_args(cfg)                     # for the original's viewer and scripts
        folder.save_input_ply(scene.points, scene.colors)
        folder.save_cameras(list(scene.test_cameras) + list(scene.train_cameras))
        log.info("scene %s: %d training and %d test views, %d points; %d ranks (%s), batch of %d views",
                 cfg.model.source_path, len(scene.train_cameras), len(scene.test_cameras), len(scene.points),
                 comm.world, "nccl" if comm.device.type == "cuda" else "gloo",
                 cfg.optim.batch_size or comm.world)
    trainer = DistributedTrainer(cfg, scene, folder, comm)
    if cfg.run.start_checkpoint:
        path = Path(cfg.run.start_checkpoint)
        if not path.is_file():
            raise ConfigError(f"--start_checkpoint {path}: file not found")
        try:
            trainer.load_state(torch_load(path, map_location=str(comm.device)))
        except (KeyError, ValueError) as err:
            raise ConfigError(f"--start_checkpoint {path}: not a usable checkpoint ({err})") from None
        trainer.last_checkpoint = str(path)
        log.info("resumed from %s at iteration %d on %d ranks", path, trainer.iteration, comm.world)
    try:
        with logging_redirect_tqdm():
            results = trainer.train()
        barrier(comm)
    finally:
        trainer.sink.close()
    if comm.is_main:
        log.info("done: %d Gaussians over %d ranks%s", trainer.num_gaussians(), comm.world,
                 f", test PSNR {results['test']['psnr']:.2f} dB" if results.get("test") else "")
    else:
        trainer.num_gaussians()
    shutdown()
    return results
