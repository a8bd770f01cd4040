"""Pictures for people: reward and held-out accuracy over training steps, as a PNG."""

from __future__ import annotations

from pathlib import Path


def plot_curves(history: list[dict[str, float]], evals: dict[int, dict[str, float]], path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
