"""pytest set-up: import lightseq from the source tree (frontends/python, where a development
build puts the extension) unless an installed lightseq is asked for (LIGHTSEQ_PYTEST_INSTALLED=1);
GPU tests skip with the reason where no GPU is usable."""
import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if os.environ.get("LIGHTSEQ_PYTEST_INSTALLED") != "1":
    sys.path.insert(0, str(ROOT / "frontends" / "python"))


def _gpu_reason():
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no GPU: torch.cuda.is_available() is False"
    try:
        import lightseq
        ok, why = lightseq.gpu_available()
    except Exception as e:  # noqa: BLE001
        return f"lightseq's extension cannot be used: {e}"
    return None if ok else f"no GPU for lightseq: {why}"


def pytest_collection_modifyitems(config, items):
    reason = None
    checked = False
    for item in items:
        if "gpu" in item.keywords:
            if not checked:
                reason, checked = _gpu_reason(), True
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"GPU test SKIPPED: {reason}"))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped with the reason otherwise)")
