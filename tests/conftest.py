"""Shared test set-up: the CUDA marker skips cleanly, with its reason, where there is no GPU."""

import pytest
import torch


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
