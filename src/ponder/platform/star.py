"""STaR / expert iteration (`algo.name=star`) as a step source: the same rollout pool, reward pool and DeepSpeed learner
as GRPO, and the same driver loop (evaluation, checkpoints, MLflow), with a different step.

One step is one iteration: sample k rationales for each prompt of the batch, keep the verified ones (deduplicated);
for a prompt with none, optionally *rationalize* — sample again with the gold answer as a hint, and keep a rationale
that verifies, trained after the plain prompt (the hint never reaches a kept example: its prompt tokens are those of
a plain sample of the same prompt, and a rationale that quotes the hint is not kept); fine-tune on what was kept
(`LearnerWorker.train_supervised`), from the initial model on everything kept so far (`restart`) or from the current
policy on this iteration's examples; push the weights.

The selection rules are pure functions of trajectories (`verified`, `hinted_requests`, `rationalized`), tested
without Ray.
"""

from __future__ import annotations

import string
from dataclasses import replace
from typing import Callable, Iterable

import ray

from ponder.actors.buffer import Ledger
from ponder.actors.rollout import Sampling
from ponder.data.template import render_prompt
from ponder.learner.worker import rollout_stats
from ponder.platform.config import PonderConfig, StarConfig
from ponder.platform.pools import LearnerGroup, RewardPool, RolloutPool
from ponder.platform.steps import prompt_batches, timed, training_sampling
from ponder.seeding import derive_seed
from ponder.types import RolloutRequest, Trajectory


def verified(samples: Iterable[Trajectory], seen: set[tuple[str, str]]) -> list[Trajectory]:
    """The samples whose answer verified, one per distinct (prompt, response) not in `seen` (which is updated).

    >>> from ponder.types import Problem
    >>> t = lambda text, ok: Trajectory(0, 0, Problem("1+1", "2"), [1], [2], text, [0.0], "stop", 0, correct=ok)
    >>> [s.response_text for s in verified([t("2", True), t("2", True), t("3", False), t("=2", True)], set())]
    ['2', '=2']
    """
    kept = []
    for t in samples:
        key = (t.problem.prompt, t.response_text)
        if t.correct and not t.masked and key not in seen:
            seen.add(key)
            kept.append(t)
    return kept


def hint_of(request: RolloutRequest, hint: str) -> str:
    """The hinted question of a request: `hint` with its {prompt} and {answer} filled in."""
    return hint.format(prompt=request.problem.prompt, answer=request.problem.answer)


def hinted_requests(requests: list[RolloutRequest], hint: str, template: str) -> list[RolloutRequest]:
    """The requests again, each question carrying its gold answer (same group ids and seeds).

    >>> from ponder.types import Problem
    >>> r = RolloutRequest(3, Problem("12+30", "42"), "12+30\\n<think>\\n", seed=7)
    >>> hinted_requests([r], "{prompt} (the answer is {answer})", "think")[0].prompt_text
    '12+30 (the answer is 42)\\n<think>\\n'
    """
    return [replace(r, problem=replace(r.problem, prompt=hint_of(r, hint)),
                    prompt_text=render_prompt(hint_of(r, hint), template)) for r in requests]


def hint_words(hint: str) -> list[str]:
    """The hint's own wording (its text around {prompt} and {answer}), which a kept rationale must not quote.

    >>> hint_words("{prompt} (the answer is {answer})")
    ['the answer is']
    """
    words = (text.strip(" \t\n()[]{}:;,.!?") for text, _, _, _ in string.Formatter().parse(hint))
    return [w for w in words if len(w) > 3]


def rationalized(hinted: Iterable[Trajectory], plain: dict[int, Trajectory], hint: str,
                 seen: set[tuple[str, str]]) -> list[Trajectory]:
    """Verified rationales of hinted samples as examples of their plain prompts: the problem and prompt tokens of
    `plain[group_id]` (a sample of the same prompt without the hint), the hinted sample's response. A rationale that
    quotes the hint's wording is not kept: trained after the plain prompt, it would teach the model to cite a hint it
    is never given."""
    words = [w.lower() for w in hint_words(hint)]
    out = []
    for t in hinted:
        if any(w in t.response_text.lower() for w in words):
            continue
        source = plain[t.group_id]
        out += verified([replace(t, problem=source.problem, prompt_ids=list(source.prompt_ids))], seen)
    return out


def star_steps(cfg: PonderConfig, rollouts: RolloutPool, rewards: RewardPool, learners: LearnerGroup,
               train_set: list, step: int, accounting: dict[str, float]) -> "StarSteps":
    """The STaR source of a run, going on after `step` with `accounting` (a resumed run's; zeros for a new one)."""
    return StarSteps(cfg.algo.star, rollouts, rewards, learners, prompt_batches(cfg, train_set),
                     training_sampling(cfg), cfg.data.template, cfg.seed, Ledger.of(accounting), step)


class StarSteps:
    """`StepSource` for `algo.name=star` (platform/steps.py): step k is iteration k."""

    def __init__(self, cfg: StarConfig, rollouts: RolloutPool, rewards: RewardPool, learners: LearnerGroup,
                 prompts: Callable[[int], list[RolloutRequest]], sampling: Sampling, template: str, seed: int,
                 ledger: Ledger, step: int):
        self.cfg, self.rollouts, self.rewards, self.learners = cfg, rollouts, rewards, learners
        self.prompts, self.sampling, self.template, self.seed = prompts, sampling, template, seed
        self.ledger, self.last = ledger, step
        self.seen: set[tuple[str, str]] = set()  # (prompt, response) of the examples kept (so far, with restart)
        self.kept: list[Trajectory] = []  # with restart: every example kept so far, what each iteration trains on

    def step(self, k: int) -> tuple[dict[str, float], list]:
        timings: dict[str, float] = {}
        requests = self.prompts(k)
        with timed(timings, "generate"):
            samples, scored = self._sample(requests)
        if not self.cfg.restart:  # deduplicated within the iteration; with restart, against everything kept so far
            self.seen = set()
        new = verified(samples, self.seen)
        solved = {t.group_id for t in samples if t.correct and not t.masked}
        failed = [r for r in requests if r.group_id not in solved]
        hinted: list[Trajectory] = []
        with timed(timings, "rationalize"):
            if self.cfg.rationalize and failed:
                hinted, _ = self._sample(hinted_requests(failed, self.cfg.hint, self.template))
                plain = {t.group_id: t for t in samples}
                rescued = rationalized(hinted, plain, self.cfg.hint, self.seen)
            else:
                rescued = []
        examples = new + rescued
        if self.cfg.restart:
            self.kept += examples
        train_set = self.kept if self.cfg.restart else examples
        metrics = {**rollout_stats(samples), "train/tokens": 0.0}  # what was trained on, if anything was kept
        with timed(timings, "train"):
            if self.cfg.restart:
                self.learners.reset()
            if train_set:
                metrics.update(self.learners.train_supervised([ray.put(train_set)], self.cfg.epochs,
                                                              derive_seed(self.seed, k)))
        with timed(timings, "weight_sync"):
            self.rollouts.push(self.learners.publish(k))
        generated = len(samples) + len(hinted)
        masked = sum(t.masked for t in samples) + sum(t.masked for t in hinted)
        self.ledger.generated(generated)
        self.ledger.trained(len(examples))
        self.ledger.dropped("reward_error", masked, groups=0)
        self.ledger.dropped("unverified", generated - len(examples) - masked, groups=0)
        rescued_groups = {t.group_id for t in rescued}
        metrics.update({
            "star/kept": float(len(examples)), "star/kept_frac": len(new) / max(len(samples), 1),
            "star/solved_frac": len(solved) / len(requests),
            "star/rationalized": float(len(rescued)),
            "star/rationalized_frac": len(rescued_groups) / len(failed) if failed else 0.0,
            "star/train_examples": float(len(train_set)),
            "rollout/tokens": float(sum(len(t.response_ids) for t in samples + hinted)),
            **self.ledger.as_metrics(), **{f"time/{name}": v for name, v in timings.items()}})
        metrics["time/step"] = sum(timings.values())
        metrics["perf/tokens_per_s"] = metrics["rollout/tokens"] / max(timings["generate"] + timings["rationalize"],
                                                                       1e-9)
        self.last = k
        return metrics, scored

    def _sample(self, requests: list[RolloutRequest]) -> tuple[list[Trajectory], list]:
        generated, _ = self.rollouts.generate(requests, self.sampling)
        scored, _ = self.rewards.score(generated)
        return [t for batch in ray.get(scored) for t in batch], scored

    def accounting(self) -> dict[str, float]:
        return self.ledger.as_metrics()

    def batches_drawn(self) -> int:
        return self.last

    def settle(self) -> None:
        """Nothing to wait for: the push returns once every engine has loaded the weights."""

    def close(self) -> dict[str, float]:
        return self.ledger.as_metrics()
