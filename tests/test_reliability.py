"""The reliability suite: one test per way a run can fail.

Each failure must exit with its code (2 for bad input), say so in one line naming the file or argument,
and leave every file of an existing run as it was (the folder is hashed before and after).
"""

import dataclasses
import hashlib
import io
import os
import pickle
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_run
import torch

from gs_trainer.data import colmap
from gs_trainer.train import main

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "data" / "tabletop"
CHECKPOINT_AT = 10
ITERATIONS = 20
# A tiny run: 25x19 px images, SH degree 1, no evaluation; a few seconds on one CPU thread.
TINY = ["-r", "8", "--sh_degree", "1", "--test_iterations", "--save_iterations", "--cpu_threads", "1", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def _restore_threads(restore_threads):
    yield


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An existing run of data/tabletop: config, cameras, events file, a PLY and chkpnt10.pth."""
    folder = tiny_run(tmp_path_factory, "existing", "--iterations", str(ITERATIONS), "--checkpoint_iterations",
                      str(CHECKPOINT_AT), *TINY[2:])   # (tiny_run gives -r 8)
    assert list(folder.glob("events.out.tfevents.*")) and (folder / "config.yaml").is_file()
    return folder


@pytest.fixture(scope="module")
def other_scene(tmp_path_factory):
    """data/tabletop with every image renamed: the same number of views, other names (another scene)."""
    out = tmp_path_factory.mktemp("other") / "scene"
    model = colmap.read_model(SCENE / "sparse" / "0")
    (out / "images").mkdir(parents=True)
    images = {}
    for key, img in model.images.items():
        shutil.copy(SCENE / "images" / img.name, out / "images" / f"other_{img.name}")
        images[key] = dataclasses.replace(img, name=f"other_{img.name}")
    colmap.write_model(dataclasses.replace(model, images=images), out / "sparse" / "0", "bin")
    return out


def snapshot(folder: Path) -> dict:
    """Every file under ``folder``: relative path -> (sha256, mode)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gs-train: error:") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def resume_args(run_folder: Path, checkpoint, *extra, scene=SCENE) -> list:
    return ["-s", str(scene), "-m", str(run_folder), "--iterations", str(ITERATIONS), *TINY,
            "--start_checkpoint", str(checkpoint), *extra]


def assert_fails_cleanly(capsys, run_folder, args, *needles, watch=None):
    watch = watch or run_folder
    before = snapshot(watch)
    assert main(args) == 2
    line = one_line_error(capsys, *needles)
    assert snapshot(watch) == before
    return line


# -- a run folder that holds another run ---------------------------------------------------------------

def test_failed_resume_from_another_scene_leaves_the_run_untouched(run, other_scene, tmp_path, capsys):
    """The issue's case: -s OTHER -m runs/existing --start_checkpoint broken.pth."""
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"\0" * 100)
    assert_fails_cleanly(capsys, run, resume_args(run, broken, scene=other_scene), f"-m {run}", "--overwrite")


def test_new_run_into_a_folder_holding_a_run_is_refused(run, capsys):
    args = ["-s", str(SCENE), "-m", str(run), "--iterations", "2", *TINY]
    assert_fails_cleanly(capsys, run, args, f"-m {run}", "already holds a run", "--overwrite")


def test_overwrite_writes_into_a_folder_holding_a_run(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert main(["-s", str(SCENE), "-m", str(copy), "--iterations", "2", "--overwrite", *TINY]) == 0
    assert (copy / "point_cloud" / "iteration_2" / "point_cloud.ply").is_file()


# -- bad checkpoints: each one line, exit 2, nothing written -------------------------------------------

def _original_trainer_checkpoint(path, run):
    n = 4
    params = (0, torch.zeros(n, 3), torch.zeros(n, 1, 3), torch.zeros(n, 15, 3), torch.zeros(n, 3),
              torch.zeros(n, 4), torch.zeros(n, 1), torch.zeros(n), torch.zeros(n, 1), torch.zeros(n, 1),
              {"state": {}, "param_groups": []}, 1.0)
    torch.save((params, 7000), path)


def _truncated(path, run):
    data = (run / f"chkpnt{CHECKPOINT_AT}.pth").read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_CHECKPOINTS = {
    "empty": (lambda p, run: p.write_bytes(b""), "the file is empty"),
    "random_bytes": (lambda p, run: p.write_bytes(os.urandom(4096)), "not a torch checkpoint"),
    "ply": (lambda p, run: p.write_bytes((run / "point_cloud" / f"iteration_{ITERATIONS}" /
                                          "point_cloud.ply").read_bytes()), "a PLY point cloud"),
    "plain_pickle": (lambda p, run: p.write_bytes(pickle.dumps({"iteration": 5})), "a plain pickle"),
    "original_trainer": (_original_trainer_checkpoint, "original 3DGS trainer"),
    "truncated": (_truncated, "truncated"),
    "a_folder": (lambda p, run: p.mkdir(), "is a folder"),
    "missing": (lambda p, run: None, "file not found"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_one_line_and_changes_nothing(run, tmp_path, capsys, kind):
    make, message = BAD_CHECKPOINTS[kind]
    path = tmp_path / "bad.pth"
    make(path, run)
    line = assert_fails_cleanly(capsys, run, resume_args(run, path), f"--start_checkpoint {path}", message)
    assert len(line) - len(str(path)) < 200, line   # no wall of library text


@pytest.mark.parametrize("iterations", [CHECKPOINT_AT, CHECKPOINT_AT - 5])
def test_checkpoint_at_or_past_iterations_is_refused(run, capsys, iterations):
    args = resume_args(run, run / f"chkpnt{CHECKPOINT_AT}.pth")
    args[args.index("--iterations") + 1] = str(iterations)
    assert_fails_cleanly(capsys, run, args, f"iteration {CHECKPOINT_AT}", f"--iterations is {iterations}")


def test_checkpoint_of_another_sh_degree_is_refused(run, capsys):
    args = resume_args(run, run / f"chkpnt{CHECKPOINT_AT}.pth", "--sh_degree", "3")
    assert_fails_cleanly(capsys, run, args, "SH degree 1", "--sh_degree 1")


def test_checkpoint_of_another_scene_is_refused_by_camera_names(run, other_scene, tmp_path, capsys):
    fresh = tmp_path / "fresh"
    args = resume_args(fresh, run / f"chkpnt{CHECKPOINT_AT}.pth", scene=other_scene)
    assert_fails_cleanly(capsys, run, args, "another scene", "other_view_000.png")
    assert not fresh.exists()


def test_checkpoint_of_another_split_is_refused_by_camera_count(run, capsys):
    args = resume_args(run, run / f"chkpnt{CHECKPOINT_AT}.pth", "--eval")
    assert_fails_cleanly(capsys, run, args, "36 training views", "31")


def test_good_resume_into_its_own_run_still_works(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert main(resume_args(copy, copy / f"chkpnt{CHECKPOINT_AT}.pth")) == 0


# -- -m, flags and config files ----------------------------------------------------------------------

def test_model_path_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "notafolder"
    target.write_text("mine\n")
    args = ["-s", str(SCENE), "-m", str(target), "--iterations", "2", *TINY[:-1]]   # tensorboard on, not quiet
    assert_fails_cleanly(capsys, tmp_path, args, f"-m {target}", "not a folder")


def test_model_path_inside_a_read_only_folder(tmp_path, capsys, monkeypatch):
    parent = tmp_path / "readonly"
    parent.mkdir()
    real_access = os.access
    # Root ignores permission bits, so the refusal of the folder is simulated where it would be granted.
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == parent else real_access(p, mode))
    args = ["-s", str(SCENE), "-m", str(parent / "run"), "--iterations", "2", *TINY]
    assert_fails_cleanly(capsys, tmp_path, args, f"-m {parent / 'run'}", f"{parent} is not writable")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write into read-only folders")
def test_model_path_inside_a_really_read_only_folder(tmp_path, capsys):
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        args = ["-s", str(SCENE), "-m", str(parent / "run"), "--iterations", "2", *TINY]
        assert_fails_cleanly(capsys, tmp_path, args, f"-m {parent / 'run'}", "not writable")
    finally:
        parent.chmod(0o755)


def test_unknown_atomics_value_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["-s", str(SCENE), "-m", str(tmp_path / "run"), "--atomics", "magic"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--atomics" in err and "invalid choice" in err, err
    assert not (tmp_path / "run").exists()


def test_invalid_yaml_is_one_line(tmp_path, capsys):
    preset = tmp_path / "bad.yaml"
    preset.write_text("model: [1, 2\noptim:\n  iterations: 3\n")
    args = ["-s", str(SCENE), "-m", str(tmp_path / "run"), "--config", str(preset)]
    assert main(args) == 2
    one_line_error(capsys, str(preset), "not valid YAML", "line ")
    assert not (tmp_path / "run").exists()


# -- interrupted runs ---------------------------------------------------------------------------------

def _train_until_signal(run_folder: Path, signum: int):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "gs_trainer.train", "-s", str(SCENE), "-m", str(run_folder), "--iterations",
           "100000", *TINY[:-1], "--no-tensorboard"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stderr:
            if "training 100000 iterations" in line:
                break
        else:
            pytest.fail(f"gs-train ended before training (rc {proc.wait()})")
        os.kill(proc.pid, signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_and_says_how_to_resume(tmp_path, signum, code):
    from gs_trainer.utils_io import torch_load
    folder = tmp_path / "run"
    rc, err = _train_until_signal(folder, signum)
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert rc == code, err[-2000:]
    assert "Traceback" not in err
    last = lines[-1]
    assert last.startswith(f"gs-train: {signal.Signals(signum).name}: stopped after iteration"), last
    checkpoints = list(folder.glob("chkpnt*.pth"))
    assert len(checkpoints) == 1 and str(checkpoints[0]) in last and "resume with: gs-train" in last
    state = torch_load(checkpoints[0])
    assert checkpoints[0].name == f"chkpnt{state['iteration']}.pth"
    assert not list(folder.rglob(".*.tmp"))
    # The printed command resumes (here for two more iterations).
    resume = shlex.split(last.split("resume with: ", 1)[1])[1:]
    resume[resume.index("--iterations") + 1] = str(state["iteration"] + 2)
    done = subprocess.run([sys.executable, "-m", "gs_trainer.train", *resume, "--quiet"], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (folder / "point_cloud" / f"iteration_{state['iteration'] + 2}" / "point_cloud.ply").is_file()


def test_leftover_temporary_files_are_removed(tmp_path):
    folder = tmp_path / "run"
    (folder / "cache").mkdir(parents=True)
    leftovers = [folder / ".chkpnt5.pth.k2j3h4x9.tmp", folder / "cache" / ".point_cloud.ply.abc_12xy.tmp"]
    keep = folder / "notes.tmp"
    for path in leftovers + [keep]:
        path.write_bytes(b"partial")
    assert main(["-s", str(SCENE), "-m", str(folder), "--iterations", "2", *TINY]) == 0
    assert not any(p.exists() for p in leftovers)
    assert keep.exists()


# -- file modes, save order, progress rate, log lines ---------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writer_honours_the_umask(tmp_path, umask, mode):
    from gs_trainer.utils_io import atomic_write_text
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "x.json", "{}\n")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def test_save_and_evaluate_before_densifying(tmp_path):
    """At an iteration that is both a save and a densification iteration, the saved PLY holds the Gaussians
    before that densification (the original trainer's order)."""
    from gs_trainer.config import TrainConfig
    from gs_trainer.model import GaussianModel
    from gs_trainer.trainer import Trainer
    from gs_trainer.utils_run import RunFolder
    from gs_trainer.utils_synthetic import make_synthetic_scene

    scene = make_synthetic_scene(num_gaussians=60, num_views=6, width=24, height=18, seed=1)
    cfg = TrainConfig()
    cfg.optim.iterations = 31
    cfg.model.sh_degree = 0
    d = cfg.densify
    d.densify_from_iter, d.densification_interval, d.densify_until_iter = 5, 30, 100
    d.densify_grad_threshold = 0.0   # every visible Gaussian is cloned or split at iteration 30
    cfg.run.save_iterations, cfg.run.test_iterations, cfg.run.quiet = [30], [30], True
    counts = {}

    class Folder(RunFolder):
        def save_gaussians(self, model, iteration):
            counts[iteration] = model.num_gaussians
            return super().save_gaussians(model, iteration)

    trainer = Trainer(cfg.validate(), scene, Folder(tmp_path, tensorboard=False))
    evaluated = []
    evaluate = trainer.evaluate
    trainer.evaluate = lambda it: evaluated.append((it, trainer.model.num_gaussians)) or evaluate(it)
    trainer.train()
    assert counts[30] == len(scene.points) < trainer.model.num_gaussians
    assert evaluated[0] == (30, len(scene.points))
    assert GaussianModel.load_ply(tmp_path / "point_cloud" / "iteration_30" / "point_cloud.ply").num_gaussians \
        == len(scene.points)


def test_progress_rate_leaves_out_evaluation_and_saving():
    from tqdm import tqdm

    from gs_trainer.trainer import exclude_from_rate
    clock = [0.0]
    bar = tqdm(total=20, file=io.StringIO(), mininterval=0)
    bar._time = lambda: clock[0]
    bar.start_t = bar.last_print_t = 0.0
    for i in range(20):
        clock[0] += 0.1           # 10 iterations per second ...
        bar.update(1)
        if i == 9:
            clock[0] += 30.0      # ... and a 30 s evaluation in the middle
            exclude_from_rate(bar, 30.0)
    stats = bar.format_dict
    assert stats["elapsed"] == pytest.approx(2.0)
    assert stats["rate"] == pytest.approx(10.0, rel=0.01)
    bar.close()


def test_scene_summary_once_and_no_atomics_note_unless_chosen(tmp_path, caplog):
    import logging
    caplog.set_level(logging.INFO)
    quiet_off = [a for a in TINY if a != "--quiet"]
    assert main(["-s", str(SCENE), "-m", str(tmp_path / "a"), "--iterations", "1", *quiet_off]) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("initial points" in m or "training and" in m for m in messages) == 1, messages
    assert not any("has no effect" in m for m in messages), messages
    caplog.clear()
    import gs_trainer.renderer
    gs_trainer.renderer._cpu_atomics_noted = False
    assert main(["-s", str(SCENE), "-m", str(tmp_path / "b"), "--iterations", "1", "--atomics", "warp",
                 *quiet_off]) == 0
    assert any("--atomics warp has no effect" in r.getMessage() for r in caplog.records)
