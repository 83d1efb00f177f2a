"""gs-render's outputs for looking at: an orbit video that decodes and plays in Chromium (H.264 MP4,
yuv420p; VP9 WebM as the fallback), its resolution options, and the depth and alpha images."""

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_run
import torch

from gs_trainer.render import main as render_main
from gs_trainer.video import CODECS, even_size, read_video, write_video

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "data" / "tabletop"
FRAMES = 6
PLAY_TIMEOUT_S = 60.0
LOSSY_PSNR_DB = 30.0      # H.264 at crf 18 / VP9 at crf 32 on smooth frames: far above this


@pytest.fixture(scope="module", autouse=True)
def _restore_threads(restore_threads):
    yield


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory, "outputs", "--eval", "--iterations", "10", "--test_iterations",
                    "--save_iterations", "--no-tensorboard")


def frames(n=8, w=64, h=48):
    yy, xx = np.mgrid[0:h, 0:w]
    return [np.stack([(xx * 4 + 8 * i) % 256, (yy * 5) % 256, np.full_like(xx, 40 + 20 * i)], -1).astype(np.uint8)
            for i in range(n)]


def stream_line(path: Path) -> str:
    import imageio_ffmpeg
    err = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                         capture_output=True, text=True, timeout=60).stderr
    return next(line for line in err.splitlines() if "Video:" in line)


def psnr(a, b):
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def test_h264_round_trip(tmp_path):
    src = frames()
    path = write_video(src, tmp_path / "v", fps=24)
    assert path == tmp_path / "v.mp4" and not list(tmp_path.glob(".*tmp*"))
    decoded, meta = read_video(path)
    assert len(decoded) == len(src) and meta["codec"] == "h264" and meta["fps"] == 24
    assert decoded[0].shape == src[0].shape
    assert min(psnr(a, b) for a, b in zip(decoded, src)) > LOSSY_PSNR_DB
    line = stream_line(path)
    assert "h264" in line and "yuv420p" in line


def test_falls_back_to_vp9_webm(tmp_path):
    path = write_video(frames(), tmp_path / "v", codecs=((".mp4", "no-such-encoder", []),) + CODECS[1:])
    assert path == tmp_path / "v.webm" and not (tmp_path / "v.mp4").exists()
    decoded, meta = read_video(path)
    assert len(decoded) == 8 and meta["codec"] == "vp9" and "yuv420p" in stream_line(path)


def test_odd_sizes_are_refused_and_even_size():
    with pytest.raises(ValueError, match="even"):
        write_video(frames(w=63), Path("/nonexistent/v"))
    assert even_size(199, 149) == (198, 148) and even_size(1, 1) == (2, 2)


def test_orbit_video_and_resolutions(run):
    assert render_main(["-m", str(run), "--split", "test", "-r", "4", "--orbit", "--orbit_frames", str(FRAMES),
                        "--orbit_resolution", "120", "--fps", "12", "--quiet"]) == 0
    views = sorted((run / "test" / "ours_10" / "renders").glob("*.png"))
    import cv2
    assert cv2.imread(str(views[0])).shape[:2] == (37, 50)             # -r 4 of 199x149
    video = run / "orbit" / "ours_10" / "orbit.mp4"
    decoded, meta = read_video(video)
    assert len(decoded) == FRAMES and meta["size"] == (120, 88) and meta["fps"] == 12  # 50x37 to width 120: 88.8 high, floored
    first = cv2.imread(str(run / "orbit" / "ours_10" / "frames" / "00000.png"))[:, :, ::-1]
    assert psnr(decoded[0], first) > LOSSY_PSNR_DB


def test_videos_play_in_chromium(run, tmp_path):
    """Chromium reaches readyState >= 2 (current data) without a decode error on gs-render's orbit video and
    on our MP4 and WebM; the OpenCV 'mp4v' stream written before is refused, which shows the check can fail."""
    import shutil

    import cv2
    from browser import Browser

    orbit = run / "orbit" / "ours_10" / "orbit.mp4"
    if not orbit.is_file():
        assert render_main(["-m", str(run), "--split", "test", "--orbit", "--orbit_frames", str(FRAMES), "--quiet"]) == 0
    shutil.copy(orbit, tmp_path / "orbit.mp4")
    mp4 = write_video(frames(), tmp_path / "h264")
    webm = write_video(frames(), tmp_path / "vp9", codecs=CODECS[1:])
    old = cv2.VideoWriter(str(tmp_path / "mp4v.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30, (64, 48))
    for f in frames():
        old.write(f[:, :, ::-1].copy())
    old.release()
    page = tmp_path / "page.html"
    page.write_text("<html><body>" + "".join(
        f'<video src="{p.name}" muted playsinline preload="auto"></video>'
        for p in (mp4, webm, tmp_path / "mp4v.mp4", tmp_path / "orbit.mp4"))
        + "</body></html>")
    state = "[...document.querySelectorAll('video')].map(v => [v.readyState, v.error ? v.error.code : 0])"
    with Browser(400, 300) as browser:
        browser.goto(page.as_uri())
        deadline = time.monotonic() + PLAY_TIMEOUT_S
        while True:
            result = browser.evaluate(state)
            if result and all(r >= 2 or e for r, e in result):
                break
            assert time.monotonic() < deadline, result
            time.sleep(0.2)
        assert result[0][0] >= 2 and result[0][1] == 0, result
        assert result[1][0] >= 2 and result[1][1] == 0, result
        assert result[2][1] != 0, result           # MEDIA_ERR_SRC_NOT_SUPPORTED for mp4v
        assert result[3][0] >= 2 and result[3][1] == 0, result   # gs-render's orbit
        # and it plays: the clock advances
        assert browser.evaluate("(async () => { const v = document.querySelector('video'); await v.play();"
                                " await new Promise(r => setTimeout(r, 300)); return v.currentTime > 0; })()")


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_depth_and_alpha(run, backend):
    """Each backend's depth (the C++ one from its forward pass) against the reference's, through gs-render."""
    import cv2
    from gs_trainer.depth_maps import expected_depth
    from gs_trainer.render import load_run
    from gs_trainer.renderer import render
    from gs_trainer.train import load_scene

    assert render_main(["-m", str(run), "--split", "test", "--depth", "--alpha", "--backend", backend,
                        "--quiet"]) == 0
    out = run / "test" / "ours_10"
    step = json.loads((out / "depth" / "scale.json").read_text())["depth_per_step"]
    d16 = cv2.imread(str(out / "depth" / "00000.png"), cv2.IMREAD_UNCHANGED)
    alpha = cv2.imread(str(out / "alpha" / "00000.png"), cv2.IMREAD_UNCHANGED)
    vis = cv2.imread(str(out / "depth_vis" / "00000.png"))
    assert d16.dtype == np.uint16 and alpha.dtype == np.uint8 and vis.shape[2] == 3
    cfg, model, _, device = load_run(str(run))
    cfg.model.model_path = str(run)
    cam = load_scene(cfg).test_cameras[0]
    with torch.no_grad():
        ref = render(model, cam, torch.zeros(3), backend="reference")
    want = expected_depth(ref.depth, ref.final_T).numpy()
    assert d16.shape == want.shape
    assert np.abs(d16 * step - want).max() <= step          # quantised to one step
    assert np.abs(alpha / 255.0 - (1 - ref.final_T.numpy())).max() <= 0.5 / 255 + 1e-6
    seen = want > 0
    assert seen.mean() > 0.5 and (want[seen] > 0.2).all()     # in front of the near plane, where seen


def test_depth_needs_a_backend_that_has_it(run, monkeypatch, capsys):
    """A backend that returns no depth (a registered one; the built-in three all compute it): one clear line,
    exit 2, nothing written."""
    import gs_trainer.renderer as renderer

    real = renderer.render
    monkeypatch.setattr(renderer, "render", lambda *a, **k: real(*a, **k)._replace(depth=None))
    assert render_main(["-m", str(run), "--split", "train", "--iteration", "10", "--depth", "--quiet"]) == 2
    assert "returned no depth image" in capsys.readouterr().err
    assert not (run / "train").exists()


def test_ply_layout_is_what_the_usual_viewers_read(run):
    """The layout the README's viewer claims rest on, as their readers expect it:
    SIBR (the original's viewer) reads the records as raw float structs {pos, n, SH (dc, then rest), opacity,
    scale, rot} after a header whose 3rd line is 'element vertex N'; splat-transform (and SuperSplat, which
    reads through it) accepts only ply/format/comment/element/property lines, needs x/y/z, scale_*, rot_*,
    opacity, f_dc_*, an f_rest_* count of 0/9/24/45, and a file size equal to header + N records."""
    from gs_trainer.model import ply_attribute_names

    path = run / "point_cloud" / "iteration_10" / "point_cloud.ply"
    data = path.read_bytes()
    end = data.index(b"\nend_header\n") + len(b"\nend_header\n")
    lines = data[:end].decode("ascii").split("\n")[:-1]
    assert lines[:2] == ["ply", "format binary_little_endian 1.0"] and lines[-1] == "end_header"
    assert lines[2].startswith("element vertex ")
    count = int(lines[2].split()[2])
    props = [line.split() for line in lines[3:-1]]
    assert all(p[0] == "property" and p[1] == "float" and len(p) == 3 for p in props)
    names = [p[2] for p in props]
    n_rest = sum(n.startswith("f_rest_") for n in names)
    assert n_rest in (0, 9, 24, 45)
    degree = {0: 0, 9: 1, 24: 2, 45: 3}[n_rest]
    assert names == ply_attribute_names(degree)        # x y z nx ny nz f_dc_* f_rest_* opacity scale_* rot_*
    assert len(data) == end + count * 4 * len(names)


def test_bad_resolution_flags(run, capsys):
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert render_main(["-m", str(run), "-r", "3", "--quiet"]) == 2
    assert render_main(["-m", str(run), "--orbit", "--orbit_resolution", "0", "--quiet"]) == 2
    assert render_main(["-m", str(run), "--orbit", "--orbit_frames", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "-r/--resolution 3" in err and "--orbit_resolution 0" in err and "--orbit_frames" in err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
