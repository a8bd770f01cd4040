"""The typed configuration schema: the only place defaults live.

YAML files override the schema, `key=value` CLI overrides go on top, and the result is validated before Ray or any
engine starts: YAML errors with their file and line, unknown keys with a "did you mean", wrong types and shapes naming
the key, then each field's range and the cross-field rules (platform/validation.py). Each component receives its own
sub-config, never the whole tree. Imports nothing heavy.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from ponder.platform.validation import ConfigError, above, at_least, between, field_default, one_of, validate
from ponder.platform.validation import parse_cores  # noqa: F401  (components take it from the schema's module)


@dataclass(frozen=True)
class TinyModelConfig:
    """`ponder init-model`: a small Qwen2-architecture causal LM and a char-level tokenizer, built offline."""

    out_dir: str = "artifacts/tiny/init"
    hidden_size: int = at_least(1, 128)
    num_layers: int = at_least(1, 4)
    num_heads: int = at_least(1, 2)
    num_kv_heads: int = at_least(1, 2)
    intermediate_size: int = at_least(1, 384)
    max_position_embeddings: int = at_least(1, 4096)
    seed: int = 0


@dataclass(frozen=True)
class SftConfig:
    """`ponder sft`: warm start on worked solutions so that RL begins from non-zero accuracy."""

    init_dir: str = "artifacts/tiny/init"
    out_dir: str = "artifacts/tiny/sft"
    steps: int = at_least(1, 260)
    batch_size: int = at_least(1, 64)
    lr: float = above(0, 1e-3)
    warmup_steps: int = at_least(0, 20)
    num_threads: int = at_least(1, 2)
    group_by_length: bool = False  # batches of similar-length examples (long-tailed tasks: far less padding)
    seed: int = 0


@dataclass(frozen=True)
class TaskConfig:
    """The embedded tasks. `embedded:arithmetic`: column-by-column addition/subtraction (digits, ops);
    `embedded:search`: find the first n >= start whose digits add up to a target (search_*); both splits by seed."""

    min_digits: int = at_least(1, 2)
    max_digits: int = at_least(1, 3)
    ops: str = "+-"
    search_min_start: int = at_least(0, 100)
    search_max_start: int = at_least(0, 999)
    search_max_steps: int = at_least(1, 44)  # candidates in the longest search (response length ~23 tokens a candidate)
    num_train: int = at_least(1, 20000)
    num_eval: int = at_least(1, 256)
    seed: int = 1234


@dataclass(frozen=True)
class DataConfig:
    """Where prompts come from. `embedded:arithmetic` generates them; otherwise a .jsonl/.parquet file or a local
    Hugging Face `datasets` directory with `prompt` and `answer` fields."""

    train: str = "embedded:arithmetic"
    eval: str = "embedded:arithmetic"
    # think: the prompt opens <think>; none: the prompt as is; chat: the model's own chat template (its tokenizer's)
    template: str = one_of("think", "none", "chat", default="think")
    task: TaskConfig = field(default_factory=TaskConfig)


@dataclass(frozen=True)
class ModelConfig:
    """The policy to train: a Hugging Face-format directory (the embedded demo builds one under artifacts/)."""

    path: str = "artifacts/tiny/sft"
    dtype: str = one_of("float32", "bfloat16", "float16", default="float32")


@dataclass(frozen=True)
class EnvConfig:
    """Multi-turn episodes (docs/environments.md): the model acts, the environment answers, the model acts again.
    `name` null: one prompt, one response. Built-ins: `tools` (calculator, Python in the sandbox) and `revision`
    (self-revision), or an import path `package.module:Name`; `options` are its keyword arguments."""

    name: Optional[str] = None  # tools, revision or package.module:Name; null = single-turn samples
    options: dict[str, Any] = field(default_factory=dict)  # the environment's keyword arguments
    max_turns: int = at_least(1, 4)  # model turns per episode; the episode ends after the last one
    max_turn_tokens: int = at_least(0, 0)  # new tokens per model turn; 0 = only rollout.max_tokens (the episode's)
    threads: int = at_least(1, 4)  # environment steps running at once per rollout actor (tool calls)
    step_timeout_s: float = above(0, 60.0)  # an environment step slower than this masks its episode
    chat_role: str = "user"  # data.template=chat: the role observations are rendered as ("tool" where supported)


@dataclass(frozen=True)
class RolloutConfig:
    """vLLM rollout actors. `num_workers` sizes the pool independently of the learner."""

    num_workers: int = at_least(1, 1)
    samples_per_prompt: int = at_least(1, 8)  # the GRPO group size
    temperature: float = at_least(0, 1.0)
    top_p: float = between(0, 1, 1.0, lo_open=True)
    max_tokens: int = at_least(1, 256)  # new tokens per sample (long chains of thought: raise with max_model_len)
    max_model_len: int = at_least(2, 4096)  # prompt + completion; at most the model's max_position_embeddings
    kv_cache_gb: float = above(0, 1.0)  # CPU engines: host memory reserved for the KV cache
    gpu_memory_utilization: float = between(0, 1, 0.85, lo_open=True)  # GPU engines: fraction of GPU memory for vLLM
    enforce_eager: bool = True  # no CUDA graphs / torch.compile (faster start; set false on GPUs)
    num_cpus: float = at_least(0, 1.0)
    num_gpus: float = at_least(0, 0.0)
    cpu_bind: Optional[str] = None  # CPU engines: cores for vLLM's threads, e.g. "0" or "0-1"; None = vLLM decides
    tensor_parallel_size: int = at_least(1, 1)
    resources: dict[str, float] = field(default_factory=dict)  # Ray custom resources per actor: pins it to a pool
    # How weights reach the engines. auto: NCCL with GPUs on both sides, else shared memory when every engine is on
    # learner rank 0's node and TCP from learner rank 0 when one is not; or force shm, network or nccl.
    weight_sync: str = one_of("auto", "shm", "network", "nccl", default="auto")
    # Budget forcing: thinking tokens a sample may use before its think block is closed for it and the answer forced.
    # [] = unbounded; [N] = N for every sample; [N1, N2, ...] = one drawn per prompt (seeded), shared by its group.
    thinking_budget: list[int] = field(default_factory=list)
    thinking_extend: int = at_least(0, 0)  # times a think block the model closes itself is reopened with `thinking_cue`
    thinking_cue: str = "Wait"
    answer_prefix: str = "\\boxed{"  # forced after the closing text when the budget runs out ("```python\n" for code)
    # Budget-conditioned RL: appended to the question of a sample with a thinking budget, with {budget} replaced by
    # it, e.g. " (think <= {budget})"; "" = the budget is not stated. `ponder eval` states each budget it sweeps.
    budget_prompt: str = ""
    env: EnvConfig = field(default_factory=EnvConfig)  # multi-turn episodes; rollout.max_tokens caps a whole episode

    @property
    def episodes(self) -> Optional[EnvConfig]:
        """The environment when samples are multi-turn episodes, else None."""
        return self.env if self.env.name else None


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
    num_workers: int = at_least(1, 1)
    processes_per_worker: int = at_least(1, 2)  # verifier processes per reward actor
    timeout_s: float = above(0, 5.0)  # hard wall-clock limit per reward call; the process is killed after it
    memory_mb: int = at_least(64, 2048)  # address-space cap per verifier process (MemoryError: term 0)
    accuracy_from: str = "math"  # the term whose value 1.0 counts as a correct answer
    revision_bonus: float = at_least(0, 0.0)  # multi-turn: added when the final answer is right and the first was not
    num_cpus: float = at_least(0, 0.5)
    resources: dict[str, float] = field(default_factory=dict)  # Ray custom resources per actor: pins it to a pool


@dataclass(frozen=True)
class StarConfig:
    """`algo.name=star`: expert iteration (STaR) on the same pools and learner as GRPO. Each training step is one
    iteration: sample rollout.samples_per_prompt rationales for each of trainer.prompts_per_step prompts, keep the
    verified ones (deduplicated), optionally rationalize the failures, fine-tune on what was kept, push the weights."""

    # A prompt none of whose samples verified is sampled again with the gold answer as a hint; a rationale that then
    # verifies is kept *without* the hint (trained after the plain prompt); one that quotes the hint is not kept.
    rationalize: bool = True
    hint: str = "{prompt} (the answer is {answer})"  # the hinted question: {prompt} and {answer} are filled in
    # true: every iteration fine-tunes the initial model afresh on every example kept so far (the STaR paper);
    # false: the current policy goes on, trained on this iteration's examples only
    restart: bool = False
    epochs: int = at_least(1, 1)  # passes over the iteration's training examples


@dataclass(frozen=True)
class PpoConfig:
    """`algo.name=ppo`: token-level advantages from a learned value model (the `critic` section sizes and trains it:
    its own DeepSpeed ranks, separate actors) by generalised advantage estimation, normalised over the batch."""

    gamma: float = between(0, 1, 1.0)  # discount per token (1: the outcome reward reaches every token undiminished)
    lam: float = between(0, 1, 0.95)  # GAE's λ: 1 = Monte-Carlo returns minus the value, 0 = one-step TD errors
    value_clip: float = above(0, 0.2)  # the new value is kept within this of the value the step started from
    warmup_steps: int = at_least(0, 0)  # the first N training steps train the value model only (the policy waits)
    critic_model: Optional[str] = None  # the value model's initial weights (a Hugging Face dir); None = model.path


@dataclass(frozen=True)
class AlgoConfig:
    """The algorithm (`name`): its advantage estimator, its clipped surrogate, the off-policy correction and the
    reward shaping. docs/algorithms.md says what each name computes."""

    # grpo: group-normalised advantages, token-level clip; rloo: leave-one-out baseline; reinforce_pp: REINFORCE++
    # (returns normalised over the whole batch, KL optionally in the reward); gspo: group-normalised advantages,
    # sequence-level ratio and clip (algo.seq_clip_*); ppo: GAE over a learned value model (algo.ppo, `critic`);
    # star: expert iteration (algo.star)
    name: str = one_of("grpo", "rloo", "reinforce_pp", "gspo", "ppo", "star", default="grpo")
    star: StarConfig = field(default_factory=StarConfig)
    ppo: PpoConfig = field(default_factory=PpoConfig)
    # > 0: RL with a replay of verified successes, a supervised term (token-mean NLL) on the step's correct samples
    # added to the GRPO loss with this weight
    replay_coef: float = at_least(0, 0.0)
    # with replay_coef: also replay this dataset's worked solutions (or an export's completions) every step
    replay_data: Optional[str] = None
    replay_per_step: int = at_least(1, 32)  # demonstrations from replay_data per step (split over learner ranks)
    norm_adv_by_std: bool = True  # grpo, gspo: false = Dr. GRPO (centre rewards, no std scaling)
    clip_low: float = between(0, 1, 0.2)  # token ratio clipped below at 1 - clip_low
    clip_high: float = at_least(0, 0.28)  # token ratio clipped above at 1 + clip_high (DAPO clip-higher)
    seq_clip_low: float = between(0, 1, 3e-4)  # gspo: the sequence ratio's band, [1 - low, 1 + high] (GSPO paper's)
    seq_clip_high: float = at_least(0, 4e-4)
    kl_coef: float = at_least(0, 0.0)  # > 0 loads a frozen reference model and adds a KL penalty
    kl_estimator: str = one_of("k1", "k2", "k3", default="k3")
    kl_in_reward: bool = False  # reinforce_pp: the KL penalty goes into each token's return instead of the loss
    entropy_coef: float = at_least(0, 0.0)  # > 0 adds an entropy bonus (entropy is always logged)
    # The engine's behaviour policy vs the learner's: tis (truncated IS), decoupled (decoupled PPO), token_mask /
    # seq_mask (tokens / whole sequences whose ratio leaves [1/is_cap, is_cap] leave the loss), none
    off_policy: str = one_of("none", "tis", "decoupled", "token_mask", "seq_mask", default="tis")
    is_cap: float = at_least(1, 2.0)  # tis: weights truncated at this; decoupled: tokens above it masked; *_mask: band
    process_coef: float = at_least(0, 1.0)  # weight of dense advantages from per-step critic scores
    # Length control, relative to the cap each sample was generated under (rollout.max_tokens):
    overlong_buffer: int = at_least(0, 0)  # DAPO soft overlong punishment: last N tokens before the cap
    overlong_penalty: float = at_least(0, 1.0)  # the punishment at the cap (it rises linearly over the buffer)
    overlong_filter: bool = False  # truncated samples leave the loss and their group's statistics (counted)
    length_penalty: float = at_least(0, 0.0)  # reward -= length_penalty * length / cap
    budget_penalty: float = at_least(0, 0.0)  # reward -= this when the thinking budget ran out (forced answer)


@dataclass(frozen=True)
class LearnerConfig:
    """The DeepSpeed learner. `num_ranks` data-parallel ranks, each a Ray actor. The `critic` section (PPO's value
    model, its own ranks) takes the same keys."""

    num_ranks: int = at_least(1, 1)
    zero_stage: int = one_of(0, 1, 2, 3, default=2)  # DeepSpeed ZeRO stage 0-3
    lr: float = above(0, 5e-5)
    weight_decay: float = at_least(0, 0.0)
    beta1: float = between(0, 1, 0.9)
    beta2: float = between(0, 1, 0.99)
    grad_clip: float = above(0, 1.0)
    micro_batch_size: int = at_least(1, 64)  # sequences per forward/backward; gradients accumulate over a mini-batch
    # > 0: micro-batches also hold at most this many tokens (padded rows × longest, or the packed row's length)
    micro_batch_tokens: int = at_least(0, 0)
    packing: bool = False  # each micro-batch's sequences in one row, no padding (attention kept within each sequence)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~1/3 more compute
    num_minibatches: int = at_least(1, 1)  # optimizer steps per pass over the step's samples
    # passes over the step's samples (PPO epochs); with num_minibatches > 1 or epochs > 1 the later updates are
    # off-policy against the step's starting weights, and the clip acts
    ppo_epochs: int = at_least(1, 1)
    num_threads: int = at_least(1, 2)  # torch intra-op threads per rank (CPU)
    cpu_bind: Optional[str] = None  # CPU: cores every rank is pinned to, e.g. "1"; None = no pinning
    num_cpus: float = at_least(0, 1.0)
    num_gpus: float = at_least(0, 0.0)
    resources: dict[str, float] = field(default_factory=dict)  # Ray custom resources per rank: pins it to a pool
    # Ray placement group of the ranks: pack (as few nodes as fit) or spread (one rank a node where possible)
    placement: str = one_of("pack", "spread", default="pack")


@dataclass(frozen=True)
class PipelineConfig:
    """How generation and training overlap. `sync` runs one stage at a time; `one_step_off` and `async` stream scored
    groups into a bounded buffer while the learner trains, with samples at most `max_staleness` versions old."""

    mode: str = one_of("sync", "one_step_off", "async", default="sync")  # one_step_off: async, staleness 1, no partials
    max_staleness: int = at_least(0, 1)  # async: largest gap in policy versions between generating and training weights
    partial_rollouts: bool = True  # async: in-flight samples take new weights mid-generation instead of finishing
    dynamic_sampling: bool = False  # streaming modes: drop groups whose rewards are all equal, refill (DAPO)
    max_refill_batches: int = at_least(0, 8)  # dynamic sampling: extra batches a step may draw before stopping


@dataclass(frozen=True)
class TrainerConfig:
    """The driver loop."""

    steps: int = at_least(1, 60)
    prompts_per_step: int = at_least(1, 32)
    eval_every: int = at_least(0, 10)  # held-out greedy evaluation every N steps (and at step 0 and the end); 0 = never
    eval_prompts: int = at_least(1, 256)  # held-out prompts used by the in-training evaluation
    log_samples_every: int = at_least(0, 10)  # sample rollouts logged to MLflow every N steps; 0 = never
    # every scored sample of every step logged to MLflow (traces/step_N.jsonl): what `ponder export` reads
    save_traces: bool = True
    output_dir: str = "outputs/run"
    save_final_model: bool = True


@dataclass(frozen=True)
class CheckpointConfig:
    """Training checkpoints: DeepSpeed state, data position, RNG, step and policy version, saved atomically to a local
    directory or `s3://bucket/prefix` (storage/checkpoints.py). `ponder train --resume auto` continues from the latest."""

    dir: Optional[str] = None  # local path or s3://bucket/prefix; None = <trainer.output_dir>/checkpoints
    every: int = at_least(0, 20)  # save every N steps (and at the last step); 0 = never
    keep_last: int = at_least(1, 2)  # complete checkpoints kept; older ones are deleted once a newer one is complete
    endpoint_url: Optional[str] = None  # S3-compatible endpoint (MinIO, on-prem); None = AWS_ENDPOINT_URL or AWS
    export_hf: bool = True  # also save the policy in Hugging Face format inside each checkpoint (for serving)


@dataclass(frozen=True)
class FaultToleranceConfig:
    """What happens when an actor dies. Rollout and reward actors are restarted by Ray and their work re-issued; a
    learner that dies stops the run with the last complete checkpoint named, or with `auto_resume` restarts from it."""

    max_actor_restarts: int = at_least(0, 3)  # restarts per rollout / reward actor before the run fails
    auto_resume: bool = False  # learner died: restart every actor from the last complete checkpoint
    max_auto_resumes: int = at_least(0, 2)  # auto_resume: at most this many restarts in one run


@dataclass(frozen=True)
class EvalConfig:
    """`ponder eval`: greedy pass@1, sampled pass@k and maj@k on the held-out split; with several samples a test-time
    scaling sweep over k = 1, 2, 4, ..., `k` (pass, maj, and with a reward_model critic best-of and RM-weighted vote),
    repeated for each thinking budget."""

    k: int = at_least(1, 8)
    temperature: float = at_least(0, 1.0)
    prompts: int = at_least(1, 256)
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
    num_cpus: Optional[int] = at_least(1, 4)  # logical CPUs of a local cluster (actors take fractions of them)
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
    # algo.name=ppo: the value model's own ranks, sized and tuned like the learner's (zero_stage, lr, micro-batches,
    # mini-batches and epochs over each step's samples, placement)
    critic: LearnerConfig = field(default_factory=lambda: LearnerConfig(lr=1e-4))
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    ft: FaultToleranceConfig = field(default_factory=FaultToleranceConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def load_config(files: list[str] | tuple[str, ...] = (), overrides: list[str] | tuple[str, ...] = ()) -> PonderConfig:
    """Schema defaults <- each YAML file in order <- `key=value` overrides; then validated. Anything wrong is a
    ConfigError naming the file (and line) or the key."""
    merged = OmegaConf.structured(PonderConfig)
    for path in files:
        merged = _merge(merged, _load_yaml(path), source=path)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. trainer.steps=10)")
    if overrides:
        try:
            update = OmegaConf.from_dotlist(list(overrides))
        except (OmegaConfBaseException, yaml.YAMLError) as e:
            raise ConfigError(f"command line: cannot parse the overrides: {str(e).splitlines()[0]}") from None
        merged = _merge(merged, update, source="command line")
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad value for '{getattr(e, 'full_key', None) or '?'}': {str(e).splitlines()[0]}") from None
    validate(cfg)
    return cfg


def _load_yaml(path: str) -> DictConfig:
    if Path(path).is_dir():
        raise ConfigError(f"config file {path!r} is a directory; pass a YAML file such as configs/default.yaml")
    if not Path(path).is_file():
        raise ConfigError(f"config file {path!r} does not exist; pass a YAML file such as configs/default.yaml")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as e:  # syntax, tab indentation, duplicate keys: the parser's mark says where
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else path
        raise ConfigError(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    except (OmegaConfBaseException, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read as a YAML config: {str(e).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of sections such as `trainer:`, not a list")
    return loaded


def _merge(base: DictConfig, update: DictConfig, source: str) -> DictConfig:
    mismatch = _shape_mismatch(OmegaConf.to_container(base), OmegaConf.to_container(update))
    if mismatch:
        raise ConfigError(f"{source}: {mismatch}")
    try:
        return OmegaConf.merge(base, update)
    except ConfigKeyError as e:
        raise ConfigError(f"{source}: {_unknown_key_message(e)}") from None
    except (OmegaConfBaseException, TypeError, ValueError) as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{source}: bad value for '{key}': {str(e).splitlines()[0]}") from None


def _kind(value: Any) -> str:
    return "mapping" if isinstance(value, dict) else "list" if isinstance(value, list) else "single value"


def _shape_mismatch(schema: Any, update: Any, prefix: str = "") -> Optional[str]:
    """The first key where `update` has a mapping, a list or a single value where the schema has another kind.

    >>> _shape_mismatch({"rollout": {"resources": {}}}, {"rollout": {"resources": [1, 2]}})
    "'rollout.resources' must be a mapping, not a list: [1, 2]"
    """
    for key, value in update.items():
        if key not in schema or value is None or schema[key] is None:  # unknown keys: the merge names them
            continue
        want, got = _kind(schema[key]), _kind(value)
        if want != got:
            example = f" (set its keys, e.g. {prefix}{key}.{next(iter(schema[key]))}=...)" if schema[key] and \
                want == "mapping" else ""
            return f"'{prefix}{key}' must be a {want}, not a {got}: {value!r}{example}"
        if want == "mapping":
            found = _shape_mismatch(schema[key], value, f"{prefix}{key}.")
            if found:
                return found
        elif want == "list" and schema[key] and isinstance(schema[key][0], dict):  # a list of sections
            for i, item in enumerate(value):
                if not isinstance(item, dict):
                    return f"'{prefix}{key}[{i}]' must be a mapping such as {schema[key][0]}, not {item!r}"
    return None


def _sections(cls: Any = PonderConfig, prefix: str = "") -> dict[type, str]:
    """Each section type's place in the schema: {RolloutConfig: 'rollout', RewardSpec: 'reward.functions[]', ...}."""
    out: dict[type, str] = {}
    for f in fields(cls):
        default = field_default(f)
        if isinstance(default, list) and default and is_dataclass(default[0]):
            out[type(default[0])] = f"{prefix}{f.name}[]"
        elif is_dataclass(default):
            out[type(default)] = f"{prefix}{f.name}"
            out.update(_sections(type(default), f"{prefix}{f.name}."))
    return out


def _unknown_key_message(e: ConfigKeyError) -> str:
    cls = e.object_type if is_dataclass(e.object_type) else PonderConfig
    valid = [f.name for f in fields(cls)]
    leaf = str(e.key)
    close = difflib.get_close_matches(leaf, valid, n=1)
    section = _sections().get(cls, "")
    if section.endswith("[]"):  # an entry of a list of sections (reward.functions)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
        return f"unknown key '{leaf}' in a {section[:-2]} entry; {hint}"
    parent = f"{section}." if section else ""
    hint = f"did you mean '{parent}{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
    return f"unknown config key '{parent}{leaf}'; {hint}"


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


