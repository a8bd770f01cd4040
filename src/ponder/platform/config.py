"""The typed configuration schema: the only place defaults live.

YAML files override the schema, `key=value` CLI overrides go on top, and the result is validated (unknown keys with a
"did you mean", wrong types naming the key, cross-field rules) before Ray or any engine starts. Each component receives
its own sub-config, never the whole tree. Imports nothing heavy.
"""

from __future__ import annotations

import difflib
import string
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration the user must fix; the message says what and how."""


@dataclass(frozen=True)
class TinyModelConfig:
    """`ponder init-model`: a small Qwen2-architecture causal LM and a char-level tokenizer, built offline."""

    out_dir: str = "artifacts/tiny/init"
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 2
    num_kv_heads: int = 2
    intermediate_size: int = 384
    max_position_embeddings: int = 4096
    seed: int = 0


@dataclass(frozen=True)
class SftConfig:
    """`ponder sft`: warm start on worked solutions so that RL begins from non-zero accuracy."""

    init_dir: str = "artifacts/tiny/init"
    out_dir: str = "artifacts/tiny/sft"
    steps: int = 260
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 20
    num_threads: int = 2
    group_by_length: bool = False  # batches of similar-length examples (long-tailed tasks: far less padding)
    seed: int = 0


@dataclass(frozen=True)
class TaskConfig:
    """The embedded tasks. `embedded:arithmetic`: column-by-column addition/subtraction (digits, ops);
    `embedded:search`: find the first n >= start whose digits add up to a target (search_*); both splits by seed."""

    min_digits: int = 2
    max_digits: int = 3
    ops: str = "+-"
    search_min_start: int = 100
    search_max_start: int = 999
    search_max_steps: int = 44  # candidates in the longest search (response length ~23 tokens a candidate)
    num_train: int = 20000
    num_eval: int = 256
    seed: int = 1234


@dataclass(frozen=True)
class DataConfig:
    """Where prompts come from. `embedded:arithmetic` generates them; otherwise a .jsonl/.parquet file or a local
    Hugging Face `datasets` directory with `prompt` and `answer` fields."""

    train: str = "embedded:arithmetic"
    eval: str = "embedded:arithmetic"
    template: str = "think"  # think: prompt opens <think>; none: the prompt as is
    task: TaskConfig = field(default_factory=TaskConfig)


@dataclass(frozen=True)
class ModelConfig:
    """The policy to train: a Hugging Face-format directory (the embedded demo builds one under artifacts/)."""

    path: str = "artifacts/tiny/sft"
    dtype: str = "float32"


@dataclass(frozen=True)
class RolloutConfig:
    """vLLM rollout actors. `num_workers` sizes the pool independently of the learner."""

    num_workers: int = 1
    samples_per_prompt: int = 8  # the GRPO group size
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256  # new tokens per sample (long chains of thought: raise with max_model_len)
    max_model_len: int = 4096  # prompt + completion; at most the model's max_position_embeddings
    kv_cache_gb: float = 1.0  # CPU engines: host memory reserved for the KV cache
    gpu_memory_utilization: float = 0.85  # GPU engines: fraction of GPU memory vLLM may use
    enforce_eager: bool = True  # no CUDA graphs / torch.compile (faster start; set false on GPUs)
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    cpu_bind: Optional[str] = None  # CPU engines: cores for vLLM's threads, e.g. "0" or "0-1"; None = vLLM decides
    tensor_parallel_size: int = 1
    resources: dict[str, float] = field(default_factory=dict)  # Ray custom resources per actor: pins it to a pool
    weight_sync: str = "shm"  # shm: safetensors in shared memory + reload (CPU, any); nccl: GPU broadcast
    # Budget forcing: thinking tokens a sample may use before its think block is closed for it and the answer forced.
    # [] = unbounded; [N] = N for every sample; [N1, N2, ...] = one drawn per prompt (seeded), shared by its group.
    thinking_budget: list[int] = field(default_factory=list)
    thinking_extend: int = 0  # times a think block the model closes itself is reopened with `thinking_cue`
    thinking_cue: str = "Wait"
    answer_prefix: str = "\\boxed{"  # forced after the closing text when the budget runs out ("```python\n" for code)
    # Budget-conditioned RL: appended to the question of a sample with a thinking budget, with {budget} replaced by
    # it, e.g. " (think <= {budget})"; "" = the budget is not stated. `ponder eval` states each budget it sweeps.
    budget_prompt: str = ""


@dataclass(frozen=True)
class RewardSpec:
    """One reward function, by registry name or `package.module:function`, with its weight and options."""

    name: str = "math"
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RewardConfig:
    """Reward actors: the weighted reward functions and the verifier processes that run them under a hard timeout."""

    functions: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("math", 1.0), RewardSpec("format", 0.1)])
    num_workers: int = 1
    processes_per_worker: int = 2  # verifier processes per reward actor
    timeout_s: float = 5.0  # hard wall-clock limit per reward call; the process is killed after it
    memory_mb: int = 2048  # address-space cap of each verifier process; MemoryError there scores the term 0
    accuracy_from: str = "math"  # the term whose value 1.0 counts as a correct answer
    num_cpus: float = 0.5
    resources: dict[str, float] = field(default_factory=dict)  # Ray custom resources per actor: pins it to a pool


@dataclass(frozen=True)
class AlgoConfig:
    """GRPO maths: advantages and the clipped token-level surrogate."""

    norm_adv_by_std: bool = True  # false = Dr. GRPO (centre rewards, no std scaling)
    clip_low: float = 0.2  # ratio clipped below at 1 - clip_low
    clip_high: float = 0.28  # ratio clipped above at 1 + clip_high (DAPO clip-higher)
    kl_coef: float = 0.0  # > 0 loads a frozen reference model and adds a KL penalty
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0  # > 0 adds an entropy bonus (entropy is always logged)
    off_policy: str = "tis"  # behaviour-policy correction: none, tis (truncated IS) or decoupled (decoupled PPO)
    is_cap: float = 2.0  # tis: importance weights truncated at this; decoupled: tokens above it are masked
    process_coef: float = 1.0  # weight of the dense advantages from per-step critic scores (per_step critics only)
    # Length control, relative to the cap each sample was generated under (rollout.max_tokens):
    overlong_buffer: int = 0  # DAPO soft overlong punishment over the last N tokens before the cap; 0 = off
    overlong_penalty: float = 1.0  # the punishment at the cap (it rises linearly over the buffer)
    overlong_filter: bool = False  # truncated samples leave the loss and their group's statistics (counted)
    length_penalty: float = 0.0  # reward -= length_penalty * length / cap
    budget_penalty: float = 0.0  # reward -= budget_penalty when the thinking budget ran out (the answer was forced)


@dataclass(frozen=True)
class LearnerConfig:
    """The DeepSpeed learner. `num_ranks` data-parallel ranks, each a Ray actor."""

    num_ranks: int = 1
    zero_stage: int = 2  # DeepSpeed ZeRO stage 0-3
    lr: float = 5e-5
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    micro_batch_size: int = 64  # sequences per forward/backward; gradients accumulate over a mini-batch
    num_minibatches: int = 1  # optimizer steps per training step (> 1: off-policy within the step)
    num_threads: int = 2  # torch intra-op threads per rank (CPU)
    cpu_bind: Optional[str] = None  # CPU: cores every rank is pinned to, e.g. "1"; None = no pinning
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)  # Ray custom resources per rank: pins it to a pool


@dataclass(frozen=True)
class PipelineConfig:
    """How generation and training overlap. `sync` runs one stage at a time; `one_step_off` and `async` stream scored
    groups into a bounded buffer while the learner trains, with samples at most `max_staleness` versions old."""

    mode: str = "sync"  # sync, one_step_off (= async with max_staleness 1, no partial rollouts) or async
    max_staleness: int = 1  # async: largest gap in policy versions between generating and training weights
    partial_rollouts: bool = True  # async: in-flight samples take new weights mid-generation instead of finishing
    dynamic_sampling: bool = False  # streaming modes: drop groups whose rewards are all equal, refill (DAPO)
    max_refill_batches: int = 8  # dynamic sampling: extra prompt batches one step may draw before the run stops


@dataclass(frozen=True)
class TrainerConfig:
    """The driver loop."""

    steps: int = 60
    prompts_per_step: int = 32
    eval_every: int = 10  # held-out greedy evaluation every N steps (and at step 0 and the end); 0 = never
    eval_prompts: int = 256  # held-out prompts used by the in-training evaluation
    log_samples_every: int = 10  # sample rollouts logged to MLflow every N steps; 0 = never
    output_dir: str = "outputs/run"
    save_final_model: bool = True


@dataclass(frozen=True)
class CheckpointConfig:
    """Training checkpoints: DeepSpeed state, data position, RNG, step and policy version, saved atomically to a local
    directory or `s3://bucket/prefix` (platform/checkpoints.py). `ponder train --resume auto` continues from the latest."""

    dir: Optional[str] = None  # local path or s3://bucket/prefix; None = <trainer.output_dir>/checkpoints
    every: int = 20  # save every N steps (and at the last step); 0 = never
    keep_last: int = 2  # complete checkpoints kept; older ones are deleted once a newer one is complete
    endpoint_url: Optional[str] = None  # S3-compatible endpoint (MinIO, on-prem); None = AWS_ENDPOINT_URL or AWS
    export_hf: bool = True  # also save the policy in Hugging Face format inside each checkpoint (for serving)


@dataclass(frozen=True)
class FaultToleranceConfig:
    """What happens when an actor dies. Rollout and reward actors are restarted by Ray and their work re-issued; a
    learner that dies stops the run with the last complete checkpoint named, or with `auto_resume` restarts from it."""

    max_actor_restarts: int = 3  # restarts per rollout / reward actor before the run fails
    auto_resume: bool = False  # learner died: restart every actor from the last complete checkpoint
    max_auto_resumes: int = 2  # auto_resume: at most this many restarts in one run


@dataclass(frozen=True)
class EvalConfig:
    """`ponder eval`: greedy pass@1, sampled pass@k and maj@k on the held-out split; with several samples a test-time
    scaling sweep over k = 1, 2, 4, ..., `k` (pass, maj, and with a reward_model critic best-of and RM-weighted vote),
    repeated for each thinking budget."""

    k: int = 8
    temperature: float = 1.0
    prompts: int = 256
    thinking_budgets: list[int] = field(default_factory=list)  # e.g. [64, 128, 256, 512]; unbounded is always run


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow. The default is a SQLite store under the working directory; any MLflow tracking URI works."""

    uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_location: str = "mlruns/artifacts"
    experiment: str = "ponder"
    run_name: Optional[str] = None
    registered_model: Optional[str] = "ponder-policy"  # the final model becomes a version of it; null = not registered


@dataclass(frozen=True)
class ClusterConfig:
    """`address=None` starts a local Ray cluster; `auto` or `ray://...` joins one."""

    address: Optional[str] = None
    num_cpus: Optional[int] = 4  # logical CPUs of a local cluster (actors take fractions of them)
    shm_dir: str = "/dev/shm"  # where the CPU weight sync writes published weights
    log_to_driver: bool = False  # actor logs stay in Ray's session log dir unless set; errors always surface


@dataclass(frozen=True)
class PonderConfig:
    """The whole configuration. `seed` drives data order, sampling seeds and initialisation."""

    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    tiny_model: TinyModelConfig = field(default_factory=TinyModelConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    ft: FaultToleranceConfig = field(default_factory=FaultToleranceConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def load_config(files: list[str] | tuple[str, ...] = (), overrides: list[str] | tuple[str, ...] = ()) -> PonderConfig:
    """Schema defaults <- each YAML file in order <- `key=value` overrides; then validated."""
    merged = OmegaConf.structured(PonderConfig)
    for path in files:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path!r} does not exist; pass a YAML file such as configs/default.yaml")
        merged = _merge(merged, OmegaConf.load(path), source=path)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. trainer.steps=10)")
    if overrides:
        merged = _merge(merged, OmegaConf.from_dotlist(list(overrides)), source="command line")
    cfg = OmegaConf.to_object(merged)
    validate(cfg)
    return cfg


def _merge(base: DictConfig, update: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, update)
    except ConfigKeyError as e:
        raise ConfigError(f"{source}: {_unknown_key_message(e)}") from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{source}: bad value for '{key}': {str(e).splitlines()[0]}") from None


def _unknown_key_message(e: ConfigKeyError) -> str:
    full_key = str(getattr(e, "full_key", "") or "")
    parent, _, leaf = full_key.rpartition(".")
    node: Any = PonderConfig
    for part in filter(None, parent.split(".")):
        node = {f.name: f for f in fields(node)}[part].default_factory  # type: ignore[union-attr]
    valid = [f.name for f in fields(node)]
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f"did you mean '{(parent + '.' if parent else '') + close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
    return f"unknown config key '{full_key}'; {hint}"


def to_yaml(cfg: PonderConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """`{'rollout.samples_per_prompt': 8, ...}` for logging as parameters."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out


def validate(cfg: PonderConfig) -> None:
    """Cross-field rules, each with the fix in its message."""
    r, lr, t, a, p = cfg.rollout, cfg.learner, cfg.trainer, cfg.algo, cfg.pipeline
    checks = [
        (r.samples_per_prompt >= 1, "rollout.samples_per_prompt must be >= 1"),
        (r.samples_per_prompt == 1 or r.temperature > 0, "rollout.samples_per_prompt > 1 needs rollout.temperature > 0 (greedy samples would be identical)"),
        (0 < r.top_p <= 1, "rollout.top_p must be in (0, 1]"),
        (r.max_tokens < r.max_model_len, "rollout.max_tokens must be smaller than rollout.max_model_len"),
        (r.num_workers >= 1, "rollout.num_workers must be >= 1"),
        (all(0 <= b < r.max_tokens for b in r.thinking_budget),
         f"rollout.thinking_budget {list(r.thinking_budget)}: every budget must be >= 0 and below rollout.max_tokens "
         f"({r.max_tokens}), which leaves room for the answer"),
        (r.thinking_extend >= 0, "rollout.thinking_extend must be >= 0"),
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
        (lr.zero_stage in (0, 1, 2, 3), "learner.zero_stage must be 0, 1, 2 or 3"),
        (a.kl_estimator in ("k1", "k2", "k3"), f"algo.kl_estimator must be k1, k2 or k3, got {a.kl_estimator!r}"),
        (a.clip_low >= 0 and a.clip_high >= 0, "algo.clip_low and algo.clip_high must be >= 0"),
        (a.off_policy in ("none", "tis", "decoupled"),
         f"algo.off_policy must be none, tis or decoupled, got {a.off_policy!r}"),
        (a.is_cap >= 1.0, "algo.is_cap must be >= 1 (importance weights are capped at it)"),
        (a.budget_penalty >= 0 and (not a.budget_penalty or r.thinking_budget),
         "algo.budget_penalty must be >= 0 and needs a budget to run out of: set rollout.thinking_budget, e.g. [256]"),
        (0 <= a.overlong_buffer < r.max_tokens,
         f"algo.overlong_buffer must be >= 0 and below rollout.max_tokens ({r.max_tokens})"),
        (p.mode in ("sync", "one_step_off", "async"),
         f"pipeline.mode must be sync, one_step_off or async, got {p.mode!r}"),
        (p.max_staleness >= 0, "pipeline.max_staleness must be >= 0"),
        (p.max_refill_batches >= 0, "pipeline.max_refill_batches must be >= 0"),
        (not p.dynamic_sampling or p.mode != "sync",
         "pipeline.dynamic_sampling refills the batch from a stream: use pipeline.mode=async (max_staleness=0 keeps "
         "the synchronous schedule) or one_step_off"),
        (cfg.model.dtype in ("float32", "bfloat16", "float16"), "model.dtype must be float32, bfloat16 or float16"),
        (len(cfg.reward.functions) > 0, "reward.functions is empty: add at least one, e.g. {name: math, weight: 1.0}"),
        (cfg.reward.timeout_s > 0, "reward.timeout_s must be > 0"),
        (all([f.name for f in cfg.reward.functions].count(k) <= 1 for k in ("reward_model", "judge")),
         "reward.functions: at most one reward_model and one judge (each is one critic actor)"),
        (all(float(f.options.get("timeout_s", 0)) < cfg.reward.timeout_s for f in cfg.reward.functions),
         f"a reward's own options.timeout_s must be below reward.timeout_s ({cfg.reward.timeout_s}), the hard limit "
         "that kills it; raise reward.timeout_s"),
        (cfg.data.template in ("think", "none"), "data.template must be 'think' or 'none'"),
        (cfg.eval.k >= 1, "eval.k must be >= 1"),
        (all(0 <= b < r.max_tokens for b in cfg.eval.thinking_budgets),
         f"eval.thinking_budgets {list(cfg.eval.thinking_budgets)}: every budget must be >= 0 and below "
         f"rollout.max_tokens ({r.max_tokens})"),
        (cfg.checkpoint.every >= 0, "checkpoint.every must be >= 0 (0 = no checkpoints)"),
        (cfg.checkpoint.keep_last >= 1, "checkpoint.keep_last must be >= 1"),
        (cfg.checkpoint.dir is None or "://" not in cfg.checkpoint.dir or cfg.checkpoint.dir.startswith("s3://"),
         f"checkpoint.dir must be a local path or s3://bucket/prefix, got {cfg.checkpoint.dir!r}"),
        (cfg.ft.max_actor_restarts >= 0 and cfg.ft.max_auto_resumes >= 0,
         "ft.max_actor_restarts and ft.max_auto_resumes must be >= 0"),
        (not cfg.ft.auto_resume or cfg.checkpoint.every > 0,
         "ft.auto_resume restarts from the last checkpoint: set checkpoint.every > 0"),
        (r.weight_sync in ("shm", "nccl"), f"rollout.weight_sync must be 'shm' or 'nccl', got {r.weight_sync!r}"),
        (r.weight_sync != "nccl" or (r.num_gpus > 0 and lr.num_gpus > 0 and lr.zero_stage < 3),
         "rollout.weight_sync=nccl needs GPUs on both sides (rollout.num_gpus, learner.num_gpus > 0) and "
         "learner.zero_stage < 3; use weight_sync=shm otherwise"),
    ]
    problems = [msg for ok, msg in checks if not ok]
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


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


def _cores_ok(spec: Optional[str]) -> bool:
    try:
        return spec is None or bool(parse_cores(spec))
    except ValueError:
        return False
