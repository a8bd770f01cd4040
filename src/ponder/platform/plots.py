"""Pictures for people, as PNGs: reward and held-out accuracy over training steps, accuracy against RL compute, and
test-time scaling curves."""

from __future__ import annotations

from pathlib import Path


def plot_curves(history: list[dict[str, float]], evals: dict[int, dict[str, float]], path: Path) -> str:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = [h["step"] for h in history]
    left.plot(steps, [h["rollout/reward_mean"] for h in history], label="reward (train samples)")
    left.plot(steps, [h["rollout/accuracy"] for h in history], label="accuracy (train samples)", alpha=0.7)
    left.set_xlabel("step")
    left.set_title("rollouts")
    left.legend()
    eval_steps = sorted(evals)
    right.plot(eval_steps, [evals[s]["eval/accuracy"] for s in eval_steps], marker="o", color="tab:green")
    right.set_xlabel("step")
    right.set_ylim(0, 1)
    right.set_title("held-out accuracy (greedy)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def compute_curve(history: list[dict[str, float]], evals: dict[int, dict[str, float]]
                  ) -> list[tuple[float, float]]:
    """(cumulative RL compute in tokens — generated plus trained — up to each evaluated step, held-out accuracy).

    >>> compute_curve([{"step": 1, "rollout/tokens": 10, "train/tokens": 30}, {"step": 2, "rollout/tokens": 5,
    ...                "train/tokens": 15}], {0: {"eval/accuracy": .1}, 2: {"eval/accuracy": .4}})
    [(0.0, 0.1), (60.0, 0.4)]
    """
    spent, total = {0: 0.0}, 0.0
    for h in history:
        total += h.get("rollout/tokens", 0.0) + h.get("train/tokens", 0.0)
        spent[int(h["step"])] = total
    return [(spent[s], evals[s]["eval/accuracy"]) for s in sorted(evals) if s in spent]


def plot_compute_curve(history: list[dict[str, float]], evals: dict[int, dict[str, float]], path: Path) -> str:
    """Train-time scaling: held-out accuracy against cumulative RL compute (tokens generated + trained)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    curve = compute_curve(history, evals)
    ax.plot([c for c, _ in curve], [a for _, a in curve], marker="o", color="tab:green")
    ax.set_xlabel("RL compute: tokens generated + trained (cumulative)")
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_scaling(points: list, max_tokens: int, out_dir: Path) -> list[str]:
    """Test-time scaling (eval/scaling.py points): accuracy against tokens generated per problem (log scale), one line
    per method and budget; and accuracy against the thinking budget (unbounded drawn at `max_tokens`)."""
    plt = _pyplot()
    paths = []
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    series: dict[tuple, list] = {}
    for p in points:
        series.setdefault((p.method, p.budget), []).append(p)
    for (method, budget), pts in sorted(series.items(), key=lambda item: (str(item[0][1]), item[0][0])):
        pts = sorted(pts, key=lambda p: p.tokens_per_problem)
        label = f"{method}" + ("" if budget is None else f", budget {budget}")
        ax.plot([p.tokens_per_problem for p in pts], [p.accuracy for p in pts], marker="o" if method != "greedy"
                else "*", markersize=4 if method != "greedy" else 9, linestyle="-" if budget is None else ":",
                label=label)
    ax.set_xscale("log")
    ax.set_xlabel("tokens generated per problem (log)")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    paths.append(_save(fig, out_dir / "scaling_tokens.png"))

    budgets = sorted({p.budget for p in points if p.budget is not None})
    if budgets:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        x_of = {b: b for b in budgets} | {None: max_tokens}
        for method, k in sorted({(p.method, p.k) for p in points if p.method in ("greedy", "pass", "maj")
                                 and (p.method == "greedy" or p.k in (1, max(q.k for q in points)))}):
            pts = sorted((p for p in points if p.method == method and p.k == k), key=lambda p: x_of[p.budget])
            ax.plot([x_of[p.budget] for p in pts], [p.accuracy for p in pts], marker="o",
                    label=method if method == "greedy" else f"{method}@{k}")
        ax.set_xscale("log")
        ax.set_xticks([x_of[b] for b in [*budgets, None]], [str(b) for b in budgets] + ["none"])
        ax.set_xlabel("thinking budget (tokens)")
        ax.set_ylabel("held-out accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(_save(fig, out_dir / "scaling_budget.png"))
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path)
