"""Valid settings: each field's own range (`Valid`, kept in the schema's field metadata by `at_least`, `above`,
`between` and `one_of`) and the cross-field rules, checked by `validate` when a config is loaded, before anything
starts. Every message names the key and says the fix."""

from __future__ import annotations

import string
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Iterator, Optional


class ConfigError(ValueError):
    """A configuration the user must fix; the message says what and how."""


@dataclass(frozen=True)
class Valid:
    """The values a setting admits: a range (each end closed or open; None: unbounded) or a set of choices. Kept in
    the field's metadata by `at_least`, `above`, `between` and `one_of`; checked at load, listed in docs/config.md."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    choices: tuple = ()

    def admits(self, value: Any) -> bool:
        if value is None:  # Optional settings: None has its own meaning
            return True
        if self.choices:
            return value in self.choices
        return ((self.lo is None or value > self.lo or (value == self.lo and not self.lo_open))
                and (self.hi is None or value <= self.hi))

    def __str__(self) -> str:
        """
        >>> [str(v) for v in (Valid(1), Valid(0, lo_open=True), Valid(0, 1, lo_open=True), Valid(choices=("a", "b")))]
        ['>= 1', '> 0', 'in (0, 1]', 'one of a, b']
        """
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"


def at_least(lo: float, default: Any) -> Any:
    return field(default=default, metadata={"valid": Valid(lo)})


def above(lo: float, default: Any) -> Any:
    return field(default=default, metadata={"valid": Valid(lo, lo_open=True)})


def between(lo: float, hi: float, default: Any, lo_open: bool = False) -> Any:
    return field(default=default, metadata={"valid": Valid(lo, hi, lo_open)})


def one_of(*choices: Any, default: Any) -> Any:
    return field(default=default, metadata={"valid": Valid(choices=choices)})


def out_of_range(cfg: Any, prefix: str = "") -> list[str]:
    """Every setting whose value its field's `Valid` does not admit, as 'key = value: must be ...'."""
    problems = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            problems += out_of_range(value, f"{prefix}{f.name}.")
        elif "valid" in f.metadata and not f.metadata["valid"].admits(value):
            problems.append(f"{prefix}{f.name} = {value!r}: must be {f.metadata['valid']}")
        elif f.type == "list[int]" and not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
            problems.append(f"{prefix}{f.name} = {value!r}: must be a list of whole numbers, e.g. [64, 256]")
    return problems


def field_default(f: Any) -> Any:
    """A dataclass field's default, from its factory where it has one."""
    return f.default_factory() if f.default_factory is not MISSING else f.default


def ranged_fields(cls: Any, prefix: str = "") -> Iterator[tuple[str, Valid, Any]]:
    """(key, its Valid, its default) for every field of the schema class `cls`, sections included, that has a range."""
    for f in fields(cls):
        default = field_default(f)
        if is_dataclass(default):
            yield from ranged_fields(type(default), f"{prefix}{f.name}.")
        elif "valid" in f.metadata:
            yield f"{prefix}{f.name}", f.metadata["valid"], default


def validate(cfg: Any) -> None:
    """A loaded PonderConfig: each setting's own range first, then the cross-field rules (which may rely on the
    ranges), each with the fix in its message. Raises ConfigError, one line naming every problem."""
    ranges = out_of_range(cfg)
    if ranges:
        raise ConfigError("; ".join(ranges))
    r, lr, t, a, p = cfg.rollout, cfg.learner, cfg.trainer, cfg.algo, cfg.pipeline
    checks = [
        (r.samples_per_prompt == 1 or r.temperature > 0, "rollout.samples_per_prompt > 1 needs rollout.temperature > 0 (greedy samples would be identical)"),
        (r.samples_per_prompt >= 2 or a.name in ("star", "reinforce_pp", "ppo"),
         "rollout.samples_per_prompt = 1: advantages are relative to each prompt's group, so with one sample every "
         "advantage is 0 and nothing is learned; use >= 2 (8 is usual)"),
        (r.max_tokens < r.max_model_len, "rollout.max_tokens must be smaller than rollout.max_model_len"),
        (all(0 <= b < r.max_tokens for b in r.thinking_budget),
         f"rollout.thinking_budget {list(r.thinking_budget)}: every budget must be >= 0 and below rollout.max_tokens "
         f"({r.max_tokens}), which leaves room for the answer"),
        (_budget_prompt_ok(r.budget_prompt),
         f"rollout.budget_prompt {r.budget_prompt!r} must contain {{budget}} and no other {{...}} field, "
         "e.g. ' (think <= {budget})'"),
        (not r.budget_prompt or r.thinking_budget or cfg.eval.thinking_budgets,
         "rollout.budget_prompt states a thinking budget, but none is set: give rollout.thinking_budget (training) "
         "or eval.thinking_budgets (ponder eval)"),
        (t.prompts_per_step % r.num_workers == 0,
         f"trainer.prompts_per_step ({t.prompts_per_step}) must be divisible by rollout.num_workers ({r.num_workers})"),
        (t.prompts_per_step % lr.num_ranks == 0,
         f"trainer.prompts_per_step ({t.prompts_per_step}) must be divisible by learner.num_ranks ({lr.num_ranks}) "
         "so that every rank trains on whole groups"),
        ((t.prompts_per_step // lr.num_ranks) % lr.num_minibatches == 0,
         "prompts per rank must be divisible by learner.num_minibatches (whole groups per mini-batch)"),
        (all(_cores_ok(c) for c in (r.cpu_bind, lr.cpu_bind)),
         "rollout.cpu_bind / learner.cpu_bind must name cores like '0', '0-1' or '0,2'"),
        (not a.budget_penalty or r.thinking_budget,
         "algo.budget_penalty needs a budget to run out of: set rollout.thinking_budget, e.g. [256]"),
        (a.overlong_buffer < r.max_tokens, f"algo.overlong_buffer must be below rollout.max_tokens ({r.max_tokens})"),
        (not p.dynamic_sampling or p.mode != "sync",
         "pipeline.dynamic_sampling refills the batch from a stream: use pipeline.mode=async (max_staleness=0 keeps "
         "the synchronous schedule) or one_step_off"),
        (len(cfg.reward.functions) > 0, "reward.functions is empty: add at least one, e.g. {name: math, weight: 1.0}"),
        (all([f.name for f in cfg.reward.functions].count(k) <= 1 for k in ("reward_model", "judge")),
         "reward.functions: at most one reward_model and one judge (each is one critic actor)"),
        (all(float(f.options.get("timeout_s", 0)) < cfg.reward.timeout_s for f in cfg.reward.functions),
         f"a reward's own options.timeout_s must be below reward.timeout_s ({cfg.reward.timeout_s}), the hard limit "
         "that kills it; raise reward.timeout_s"),
        (all(0 <= b < r.max_tokens for b in cfg.eval.thinking_budgets),
         f"eval.thinking_budgets {list(cfg.eval.thinking_budgets)}: every budget must be >= 0 and below "
         f"rollout.max_tokens ({r.max_tokens})"),
        (cfg.checkpoint.dir is None or "://" not in cfg.checkpoint.dir or cfg.checkpoint.dir.startswith("s3://"),
         f"checkpoint.dir must be a local path or s3://bucket/prefix, got {cfg.checkpoint.dir!r}"),
        (not cfg.ft.auto_resume or cfg.checkpoint.every > 0,
         "ft.auto_resume restarts from the last checkpoint: set checkpoint.every > 0"),
        (not r.env.name or not (r.thinking_budget or r.thinking_extend),
         "rollout.env (multi-turn episodes) and budget forcing (rollout.thinking_budget / thinking_extend) cannot be "
         "combined yet: drop one of them"),
        (r.env.max_turn_tokens < r.max_tokens, f"rollout.env.max_turn_tokens must be below rollout.max_tokens "
         f"({r.max_tokens}), which caps the whole episode (0: no per-turn cap)"),
        (not cfg.reward.revision_bonus or r.env.name,
         "reward.revision_bonus rewards a fixed first answer: it needs a multi-turn environment (rollout.env.name, "
         "e.g. revision)"),
        (r.weight_sync != "nccl" or (r.num_gpus > 0 and lr.num_gpus > 0 and lr.zero_stage < 3),
         "rollout.weight_sync=nccl needs GPUs on both sides (rollout.num_gpus, learner.num_gpus > 0) and "
         "learner.zero_stage < 3; use weight_sync=auto otherwise"),
        (a.name != "star" or p.mode == "sync",
         "algo.name=star samples, keeps and fine-tunes one iteration at a time: use pipeline.mode=sync"),
        (a.name != "star" or not r.env.name,
         "algo.name=star does not take multi-turn episodes (rollout.env) yet: use algo.name=grpo for them"),
        (a.name != "star" or not a.kl_coef and not a.replay_coef,
         "algo.kl_coef and algo.replay_coef are GRPO's: set them to 0 with algo.name=star"),
        (not a.kl_in_reward or a.name == "reinforce_pp" and a.kl_coef > 0,
         "algo.kl_in_reward puts REINFORCE++'s KL penalty into each token's return: use it with "
         "algo.name=reinforce_pp and algo.kl_coef > 0 (e.g. 0.01)"),
        (not lr.packing or lr.micro_batch_tokens > 0,
         "learner.packing puts each micro-batch in one row of at most learner.micro_batch_tokens tokens: set it "
         f"(e.g. {r.max_model_len}: a micro-batch of at least one whole sequence)"),
        (a.name != "ppo" or (t.prompts_per_step // cfg.critic.num_ranks) % cfg.critic.num_minibatches == 0 and
         t.prompts_per_step % cfg.critic.num_ranks == 0,
         f"trainer.prompts_per_step ({t.prompts_per_step}) must split into whole groups over critic.num_ranks "
         f"({cfg.critic.num_ranks}) and then critic.num_minibatches ({cfg.critic.num_minibatches})"),
        (a.name != "ppo" or not any(f.options.get("per_step") for f in cfg.reward.functions),
         "algo.name=ppo takes outcome rewards; per-step critic scores (options.per_step) are not used by it yet: "
         "use algo.name=grpo for process rewards"),
        (not a.replay_data or a.replay_coef > 0,
         "algo.replay_data is replayed with the replay term's weight: set algo.replay_coef > 0 (e.g. 0.1)"),
        (_hint_ok(a.star.hint),
         f"algo.star.hint {a.star.hint!r} must contain {{prompt}} and {{answer}} and no other {{...}} field, e.g. "
         "'{prompt} (the answer is {answer})'"),
    ]
    problems = [msg for ok, msg in checks if not ok]
    if problems:
        raise ConfigError("; ".join(problems))


def parse_cores(spec: str) -> set[int]:
    """'0-2,5' -> {0, 1, 2, 5}.

    >>> sorted(parse_cores("0-2,5"))
    [0, 1, 2, 5]
    """
    cores: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        cores.update(range(int(low), int(high or low) + 1))
    return cores


def _budget_prompt_ok(text: str) -> bool:
    """"" (off), or a format string whose one field is {budget}."""
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
    except ValueError:  # an unmatched brace
        return False
    return not text or fields == {"budget"}


def _hint_ok(text: str) -> bool:
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
    except ValueError:
        return False
    return fields == {"prompt", "answer"}


def _cores_ok(spec: Optional[str]) -> bool:
    try:
        return spec is None or bool(parse_cores(spec))
    except ValueError:
        return False
