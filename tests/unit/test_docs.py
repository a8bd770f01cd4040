"""Docs that are generated must stay true to the code."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_config_reference_matches_the_schema():
    fresh = subprocess.run([sys.executable, "-m", "ponder.platform.config_reference"], capture_output=True,
                           text=True, check=True, timeout=60).stdout
    assert fresh == (REPO / "docs" / "config.md").read_text(), "run `make config-reference` and commit docs/config.md"


def test_default_config_loads():
    from ponder.platform.config import load_config

    cfg = load_config([str(REPO / "configs" / "default.yaml")])
    assert cfg.trainer.steps > 0
