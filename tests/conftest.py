"""Shared fixtures: a tiny model built offline, once per session, and GPU-test skipping."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if item.get_closest_marker("gpu") is not None:  # the marker, not any keyword (a test id may say gpu)
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A freshly initialised tiny Qwen2 (no SFT): integration tests check plumbing and numerics, not skill."""
    from ponder.data.tiny_model import build_tiny_model
    from ponder.platform.config import TinyModelConfig

    out = tmp_path_factory.mktemp("tiny") / "init"
    return str(build_tiny_model(TinyModelConfig(out_dir=str(out))))
