"""The reward actor: scores trajectories with the configured reward functions, off the driver.

Owns a `HardTimeoutPool` of verifier processes. Receives trajectory batches (Ray resolves the ObjectRefs it is given),
fills in each trajectory's weighted reward, its terms, correctness and mask, and returns the batch plus a small
`ScoreReport` (counts for the driver, rewards for the trajectory buffer's dynamic sampling). A plain class: Ray is applied in `platform/cluster.py`.
"""

from __future__ import annotations

from collections import Counter

from ponder.platform.config import RewardConfig, RewardSpec
from ponder.rewards.base import RewardOutcome
from ponder.rewards.pool import HardTimeoutPool, Result, Task
from ponder.rewards.registry import check_options
from ponder.types import ScoreReport, Trajectory


class RewardWorker:
    def __init__(self, cfg: RewardConfig):
        for spec in cfg.functions:  # fail at start-up, not mid-run: unknown reward or option, or no isolation
            fn = check_options(spec.name, dict(spec.options))
            if hasattr(fn, "self_test"):
                fn.self_test(dict(spec.options))
        self.cfg = cfg
        prepare = tuple((spec.name, dict(spec.options)) for spec in cfg.functions)
        self.pool = HardTimeoutPool(cfg.processes_per_worker, cfg.timeout_s, cfg.memory_mb, prepare)

    def score(self, *batches: list[Trajectory]) -> tuple[list[Trajectory], ScoreReport]:
        trajectories = [t for batch in batches for t in batch]
        specs = [self._specs_for(t) for t in trajectories]
        tasks = [Task(s.name, t.response_text, t.problem, dict(s.options)) for t, ss in zip(trajectories, specs)
                 for s in ss]
        results = iter(self.pool.map(tasks))
        counts: Counter[str] = Counter()
        for traj, ss in zip(trajectories, specs):
            outcome = compose(ss, [next(results) for _ in ss])
            traj.reward, traj.reward_terms, traj.masked = outcome.reward, outcome.terms, outcome.masked
            traj.correct = outcome.terms.get(self.cfg.accuracy_from, 0.0) >= 1.0
            counts.update({"timeouts": len(outcome.timeouts), "over_limit": len(outcome.over_limit),
                           "errors": len(outcome.errors), "masked": outcome.masked})
        report = ScoreReport(counts={f"reward/{k}": float(v) for k, v in counts.items()},
                             rewards=tuple(t.reward for t in trajectories if not t.masked),
                             masked=sum(t.masked for t in trajectories))
        return trajectories, report

    def _specs_for(self, traj: Trajectory) -> list[RewardSpec]:
        """A dataset row may name its own reward; otherwise the configured list applies."""
        return [RewardSpec(traj.problem.reward, 1.0)] if traj.problem.reward else list(self.cfg.functions)

    def pids(self) -> list[int]:
        return self.pool.pids()

    def close(self) -> None:
        self.pool.close()


def compose(specs: list[RewardSpec], results: list[Result]) -> RewardOutcome:
    """Weighted sum of the terms. A term that timed out or hit a limit scores 0; an errored term masks the sample."""
    outcome = RewardOutcome(reward=0.0)
    for spec, result in zip(specs, results):
        outcome.terms[spec.name] = result.value if result.status == "ok" else 0.0
        if result.status == "timeout":
            outcome.timeouts.append(spec.name)
        elif result.status == "over_limit":
            outcome.over_limit.append(spec.name)
        elif result.status == "error":
            outcome.errors.append(f"{spec.name}: {result.error}")
        outcome.reward += spec.weight * outcome.terms[spec.name]
    return outcome
