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
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    methods = sorted({p.method for p in points}, key=["greedy", "pass", "maj", "best", "rm_vote"].index)
    colour = {m: f"C{i}" for i, m in enumerate(methods)}
    budget_list = sorted({p.budget for p in points}, key=lambda b: (b is None, b or 0))
    style = {b: "-" if b is None else [":", "--", "-.", (0, (3, 1, 1, 1, 1, 1)), (0, (8, 2))][i % 5]
             for i, b in enumerate(budget_list)}
    for method in methods:
        for budget in budget_list:
            pts = sorted((p for p in points if p.method == method and p.budget == budget),
                         key=lambda p: p.tokens_per_problem)
            ax.plot([p.tokens_per_problem for p in pts], [p.accuracy for p in pts], color=colour[method],
                    linestyle=style[budget], marker="*" if method == "greedy" else "o",
                    markersize=9 if method == "greedy" else 3)
    handles = [Line2D([], [], color=colour[m], marker="*" if m == "greedy" else "o", label=m) for m in methods]
    handles += [Line2D([], [], color="grey", linestyle=style[b], label="unbounded" if b is None else f"budget {b}")
                for b in budget_list]
    ax.set_xscale("log")
    ax.set_xlabel("tokens generated per problem (log)")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=7, ncol=2)
    paths.append(_save(fig, out_dir / "scaling_tokens.png"))

    budgets = sorted({p.budget for p in points if p.budget is not None})
    if budgets:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        x_of = {b: b for b in budgets} | {None: max_tokens}
        top = max(q.k for q in points)
        for method, k in [("greedy", 1), ("pass", 1), ("pass", top), ("maj", top)]:
            if method != "greedy" and top == 1:
                continue
            pts = sorted((p for p in points if p.method == method and p.k == k), key=lambda p: x_of[p.budget])
            if not pts:
                continue
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
