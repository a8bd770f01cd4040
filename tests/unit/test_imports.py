"""Import rules of ARCHITECTURE.md, checked on the source."""

import ast
import platform
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "ponder"


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def files(sub: str):
    return sorted((SRC / sub).rglob("*.py"))


def test_stdlib_platform_is_not_shadowed():
    assert hasattr(platform, "system") and platform.system()


def test_rewards_import_no_heavy_frameworks():
    for f in files("rewards"):
        heavy = {m for m in imports_of(f) if m.split(".")[0] in {"torch", "ray", "vllm", "deepspeed"}}
        assert not heavy, f"{f.name} imports {heavy}"


def test_actors_and_learner_do_not_import_each_other():
    for f in files("actors"):
        assert not any(m.startswith("ponder.learner") for m in imports_of(f)), f
    for f in files("learner"):
        assert not any(m.startswith("ponder.actors") for m in imports_of(f)), f


COMPONENTS = ("actors", "learner", "transport", "rewards", "data", "eval", "storage")


def test_components_take_only_the_config_schema_from_the_control_plane():
    """What a component needs of the control plane is passed in (a handle, a callable, a sub-config)."""
    for sub in COMPONENTS:
        for f in files(sub):
            upward = {m for m in imports_of(f) if m.startswith("ponder.platform") and m != "ponder.platform.config"}
            assert not upward, f"{f.relative_to(SRC)} imports {upward}"


def test_packages_import_each_other_without_cycles():
    def package(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 2 else module  # ponder.x.y -> x; top-level modules stand alone

    graph: dict[str, set[str]] = {}
    for f in SRC.rglob("*.py"):
        name = package("ponder." + ".".join(f.relative_to(SRC).with_suffix("").parts))
        targets = {package(m) for m in imports_of(f) if m.startswith("ponder.") and m.count(".") >= 1}
        if name == "platform":
            continue  # the top floor may import anything; nothing but the schema imports it (test above)
        graph.setdefault(name, set()).update(t for t in targets if t not in (name, "platform"))

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        for nxt in graph.get(node, ()):
            found = cycle_from(nxt, path + [node])
            if found:
                return found
        return None

    for node in graph:
        assert cycle_from(node, []) is None, " -> ".join(cycle_from(node, []))


def test_only_tracking_imports_mlflow_and_nothing_imports_driver():
    for f in SRC.rglob("*.py"):
        mods = imports_of(f)
        if f.name != "tracking.py":
            assert not any(m.split(".")[0] == "mlflow" for m in mods), f
        if f.name != "cli.py":
            assert "ponder.platform.driver" not in mods, f


def test_only_cluster_applies_ray_remote():
    for f in SRC.rglob("*.py"):
        if f.name != "cluster.py":
            assert "ray.remote" not in f.read_text(), f


def test_core_imports_without_ray_vllm_deepspeed():
    code = ("import sys\n"
            "for m in ('ray', 'vllm', 'deepspeed'): sys.modules[m] = None\n"
            "import ponder.types, ponder.platform.config, ponder.rewards.registry, ponder.rewards.pool\n"
            "import ponder.learner.losses, ponder.learner.advantages\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_modules_stay_small():
    for f in SRC.rglob("*.py"):
        assert len(f.read_text().splitlines()) <= 500, f
