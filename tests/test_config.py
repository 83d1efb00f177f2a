"""Config: defaults, YAML presets, command-line flags (and their precedence), round trip through the run folder."""

import os
from pathlib import Path

import pytest

from gs_trainer.config import ConfigError, TrainConfig, load_config, save_config
from gs_trainer.train import build_parser, parse_config

ROOT = Path(__file__).resolve().parents[1]


def test_cli_flags_are_the_original_names():
    cfg = parse_config(["-s", "data/x", "-m", "runs/x", "-r", "2", "-i", "imgs", "--eval", "--iterations", "123",
                        "--test_iterations", "10", "20", "--save_iterations", "50", "--checkpoint_iterations", "60",
                        "--start_checkpoint", "runs/x/chkpnt60.pth", "--sh_degree", "1",
                        "--densify_grad_threshold", "0.0005", "--densify_until_iter", "77", "--position_lr_init",
                        "1e-3", "--white_background", "--random_background", "--atomics", "warp",
                        "--balance_threshold", "12", "--device", "cpu", "--no-tensorboard", "--lambda_dssim", "0.3"])
    m, o, d, r = cfg.model, cfg.optim, cfg.densify, cfg.run
    assert (m.source_path, m.model_path, m.resolution, m.images, m.eval, m.sh_degree) == (
        os.path.abspath("data/x"), "runs/x", 2, "imgs", True, 1)   # source_path absolute: the run opens from anywhere
    assert m.white_background and o.random_background
    assert (o.iterations, o.position_lr_init, o.lambda_dssim) == (123, 1e-3, 0.3)
    assert (d.densify_grad_threshold, d.densify_until_iter) == (0.0005, 77)
    assert (r.test_iterations, r.save_iterations, r.checkpoint_iterations) == ([10, 20], [50], [60])
    assert (r.start_checkpoint, r.atomics, r.balance_threshold, r.device, r.tensorboard) == (
        "runs/x/chkpnt60.pth", "warp", 12, "cpu", False)


def test_defaults_are_the_3dgs_recipe():
    cfg = parse_config(["-s", "data/x", "-m", "runs/x"])
    assert cfg.optim.iterations == 30_000 and cfg.densify.densify_until_iter == 15_000
    assert cfg.densify.densify_grad_threshold == 0.0002 and cfg.densify.opacity_reset_interval == 3000
    assert cfg.run.atomics == "distwar" and cfg.run.balance_threshold == 8
    assert cfg.run.device in ("cpu", "cuda") and cfg.model.sh_degree == 3


def test_default_yaml_equals_builtin_defaults():
    cfg = load_config(ROOT / "configs" / "default.yaml")
    assert cfg.to_dict() == TrainConfig().to_dict()


def test_precedence_defaults_then_yaml_then_cli(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("optim:\n  iterations: 500\n  feature_lr: 0.01\nrun:\n  atomics: tile\n")
    cfg = parse_config(["-s", "d", "-m", "m", "--config", str(preset), "--iterations", "42"])
    assert cfg.optim.iterations == 42 and cfg.optim.feature_lr == 0.01 and cfg.run.atomics == "tile"
    assert cfg.optim.opacity_lr == 0.025


def test_run_config_round_trip(tmp_path):
    cfg = parse_config(["-s", "d", "-m", "m", "--config", str(ROOT / "configs" / "cpu.yaml"), "--atomics", "baseline"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").to_dict() == cfg.to_dict()


@pytest.mark.parametrize("text, message", [
    ("optim:\n  iterationz: 5\n", "unknown key optim.iterationz"),
    ("densify:\n  iterations: 5\n", "unknown key densify.iterations"),
    ("optim:\n  iterations: many\n", "iterations must be an integer"),
    ("run:\n  atomics: magic\n", "atomics must be one of"),
    ("model: [1, 2\n", "not valid YAML"),
    ("!!python/object/apply:os.system ['true']\n", "not valid YAML"),
])
def test_bad_yaml_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_bad_flags_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--atomics", "magic"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="source_path"):
        parse_config(["-m", "x"])
