"""Shared test set-up: the CUDA marker skips cleanly, with its reason, where there is no GPU; tiny trained runs
of the embedded scene for the tests that need a run folder."""

from pathlib import Path

import pytest
import torch

SCENE = Path(__file__).resolve().parents[1] / "data" / "tabletop"


def tiny_run(tmp_path_factory, name: str, *args: str) -> Path:
    """A run folder of data/tabletop at -r 8, one thread, trained by gs-train's main with ``args`` (iterations,
    --eval, what to save); skips the test where the scene is missing."""
    from gs_trainer.train import main as train_main
    if not SCENE.is_dir():
        pytest.skip("data/tabletop is missing")
    run = tmp_path_factory.mktemp(name) / "run"
    code = train_main(["-s", str(SCENE), "-m", str(run), "-r", "8", "--cpu_threads", "1", "--quiet", *args])
    assert code == 0
    return run


@pytest.fixture(scope="module")
def restore_threads():
    """gs-train's main sets torch's thread count (--cpu_threads 1): give the other test modules theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _cuda_skip_reason():
    if not torch.cuda.is_available():
        return "no CUDA GPU available (torch.cuda.is_available() is False)"
    try:
        from cuda_rasterizer._backend import load_extension
        load_extension()
    except Exception as err:  # noqa: BLE001 - the reason is shown to the user
        return f"CUDA extension could not be built or loaded: {err}"
    return None


def pytest_collection_modifyitems(config, items):
    cuda_items = [item for item in items if "cuda" in item.keywords]
    if not cuda_items:
        return
    reason = _cuda_skip_reason()
    if reason:
        marker = pytest.mark.skip(reason=reason)
        for item in cuda_items:
            item.add_marker(marker)
