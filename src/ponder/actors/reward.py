"""The reward actor: scores trajectories with the configured rewards, off the driver.

Owns a `HardTimeoutPool` of verifier processes for the reward functions, and asks the critic actors (reward model,
LLM judge) for the critic terms. Receives trajectory batches (Ray resolves the ObjectRefs it is given), fills in each
trajectory's weighted reward, its terms, per-step critic scores, correctness and mask, and returns the batch plus a
small `ScoreReport` (counts for the driver, rewards for the trajectory buffer's dynamic sampling). A critic that gives
no score (a judge's unparseable output) masks the sample, like any infrastructure failure, and is counted. A plain
class: Ray is applied in `platform/cluster.py`.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Optional

from ponder.platform.config import RewardConfig, RewardSpec
from ponder.rewards.base import RewardOutcome
from ponder.rewards.critic import KINDS
from ponder.rewards.pool import HardTimeoutPool, Result, Task
from ponder.rewards.registry import check_options
from ponder.types import CriticRequest, CriticScore, ScoreReport, Trajectory


class RewardWorker:
    def __init__(self, cfg: RewardConfig, critics: Optional[dict[str, Any]] = None):
        """`critics`: handles of the critic actors (actors/critic.py) by reward name, made by platform/cluster.py."""
        self.critics = critics or {}
        for spec in cfg.functions:  # fail at start-up, not mid-run: unknown reward or option, or no isolation
            if spec.name in KINDS:
                if spec.name not in self.critics:
                    raise ValueError(f"reward {spec.name!r} is served by a critic actor and none was given")
                continue
            fn = check_options(spec.name, dict(spec.options), cfg.timeout_s)
            if hasattr(fn, "self_test"):
                fn.self_test(dict(spec.options))
        self.cfg = cfg
        prepare = tuple((s.name, dict(s.options)) for s in cfg.functions if s.name not in KINDS)
        self.pool = HardTimeoutPool(cfg.processes_per_worker, cfg.timeout_s, cfg.memory_mb, prepare)

    def score(self, *batches: list[Trajectory]) -> tuple[list[Trajectory], ScoreReport]:
        trajectories = [t for batch in batches for t in batch]
        specs = [self._specs_for(t) for t in trajectories]
        answers = [t.attempts or [t.response_text] for t in trajectories]  # an episode's answer turns, in order
        asked = self._ask_critics(trajectories, specs)  # the critics work while the verifier processes do
        tasks = [Task(s.name, text, t.problem, dict(s.options)) for t, ss, texts in zip(trajectories, specs, answers)
                 for text in texts for s in ss if s.name not in KINDS]
        verified = iter(self.pool.map(tasks))
        critiques = self._critic_scores(asked)
        counts: Counter[str] = Counter()
        for i, (traj, ss, texts) in enumerate(zip(trajectories, specs, answers)):
            outcomes = [compose(ss, [next(verified) if s.name not in KINDS else _critic_result(critiques[s.name][i])
                                     for s in ss]) for _ in texts]
            for spec in (s for s in ss if s.name in KINDS):  # a critic scores the whole response, once
                critique = critiques[spec.name][i]
                traj.step_scores = traj.step_scores + [(end, spec.weight * v) for end, v in critique.steps]
                counts[f"{spec.name}_unscored"] += critique.value is None
            self._settle(traj, outcomes)
            counts.update({"timeouts": sum(len(o.timeouts) for o in outcomes), "errors": sum(len(o.errors) for o in
                           outcomes), "over_limit": sum(len(o.over_limit) for o in outcomes), "masked": traj.masked})
        report = ScoreReport(counts={f"reward/{k}": float(v) for k, v in counts.items()},
                             rewards=tuple(t.reward for t in trajectories if not t.masked),
                             masked=sum(t.masked for t in trajectories), pid=os.getpid(),
                             env_masked=sum(t.episode_end == "env_error" for t in trajectories))
        return trajectories, report

    def _settle(self, traj: Trajectory, outcomes: list[RewardOutcome]) -> None:
        """The final answer's score is the sample's; a wrong first answer fixed by the last earns the revision bonus.
        A verifier's error masks the sample (an environment's failure has masked it already, with its reason)."""
        final = outcomes[-1]
        traj.attempts_correct = [o.terms.get(self.cfg.accuracy_from, 0.0) >= 1.0 for o in outcomes]
        traj.correct = traj.attempts_correct[-1]
        if len(outcomes) > 1 and self.cfg.revision_bonus and traj.correct and not traj.attempts_correct[0]:
            final.terms["revision_bonus"] = self.cfg.revision_bonus
            final.reward += self.cfg.revision_bonus
        traj.reward, traj.reward_terms = final.reward, final.terms
        errors = [e for o in outcomes for e in o.errors]
        if errors and not traj.masked:
            traj.masked, traj.mask_reason = True, "; ".join(errors)[:500]

    def _ask_critics(self, trajectories: list[Trajectory], specs: list[list[RewardSpec]]) -> dict[str, tuple]:
        """Per critic in use: (indices of the trajectories it scores, the ref of its answer)."""
        asked = {}
        for name in {s.name for ss in specs for s in ss if s.name in KINDS}:
            indices = [i for i, ss in enumerate(specs) if any(s.name == name for s in ss)]
            requests = [CriticRequest(trajectories[i].problem.prompt, trajectories[i].response_text,
                                      trajectories[i].response_ids) for i in indices]
            asked[name] = (indices, self.critics[name].score.remote(requests))
        return asked

    @staticmethod
    def _critic_scores(asked: dict[str, tuple]) -> dict[str, dict[int, CriticScore]]:
        if not asked:
            return {}
        import ray

        return {name: dict(zip(indices, ray.get(ref))) for name, (indices, ref) in asked.items()}

    def _specs_for(self, traj: Trajectory) -> list[RewardSpec]:
        """A dataset row may name its own reward function; otherwise the configured list applies."""
        return [RewardSpec(traj.problem.reward, 1.0)] if traj.problem.reward else list(self.cfg.functions)

    def pid(self) -> int:
        """The driver's ping: this process (a new one once Ray has restarted the actor)."""
        return os.getpid()

    def close(self) -> None:
        self.pool.close()


def _critic_result(critique: CriticScore) -> Result:
    return Result("ok", critique.value) if critique.value is not None else Result("error", error="no score")


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
