"""What a step's multi-turn episodes did: turns, how they ended, the environment's own metrics (tool calls, errors,
seconds) and, once any episode has several answers (self-revision), first-attempt against final accuracy and how
often a revision fixed or broke an answer."""

from __future__ import annotations

from collections import Counter

from ponder.types import Trajectory


def episode_stats(trajectories: list[Trajectory]) -> dict[str, float]:
    """{} for single-turn samples.

    >>> from ponder.types import Problem
    >>> t = Trajectory(0, 0, Problem("1+1", "2"), [1], [2, 3], "", [0.0, 0.0], "stop", 0, turns=2,
    ...                episode_end="done", attempts_correct=[False, True], env_metrics={"tool/calls": 1.0})
    >>> s = episode_stats([t]); s["episode/turns_mean"], s["episode/end_done"], s["revision/fixed"], s["tool/calls"]
    (2.0, 1.0, 1.0, 1.0)
    """
    episodes = [t for t in trajectories if t.episode_end]
    if not episodes:
        return {}
    n = len(episodes)
    ends = Counter(t.episode_end for t in episodes)
    env_totals: Counter[str] = Counter()
    for t in episodes:
        env_totals.update(t.env_metrics)
    stats = {"episode/count": float(n), "episode/turns_mean": sum(t.turns for t in episodes) / n,
             "episode/turns_max": float(max(t.turns for t in episodes)),
             **{f"episode/end_{how}": ends[how] / n for how in ("done", "max_turns", "max_tokens", "env_error")},
             **{name: float(value) for name, value in env_totals.items()}}
    revised = [t for t in episodes if len(t.attempts_correct) > 1]
    scored = [t for t in episodes if t.attempts_correct]
    if revised:  # episodes with several answers (self-revision); first and final accuracy are over all of them
        stats["revision/first_accuracy"] = sum(t.attempts_correct[0] for t in scored) / len(scored)
        stats["revision/final_accuracy"] = sum(t.attempts_correct[-1] for t in scored) / len(scored)
        stats["revision/revised_frac"] = len(revised) / len(scored)
        stats["revision/fixed"] = float(sum(not t.attempts_correct[0] and t.attempts_correct[-1] for t in revised))
        stats["revision/broken"] = float(sum(t.attempts_correct[0] and not t.attempts_correct[-1] for t in revised))
    return stats
