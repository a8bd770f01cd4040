"""The rollout actor: hosts one vLLM engine and turns prompts into trajectories stamped with a policy version.

vLLM's CPU build here, its CUDA build on GPUs; the code is the same. Each of a prompt's `n` samples is its own
request with its own seed, derived from (run seed, step, prompt, sample), so a run's samples are reproducible.
Weights arrive as a `WeightsVersion` handle from the learner (transport/weights.py): verified, then loaded in place.
A plain class; Ray is applied in `platform/cluster.py`. Talks to: transport (weights in), types (trajectories out).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ponder.platform.config import RolloutConfig
from ponder.transport.weights import verify
from ponder.types import RolloutRequest, Trajectory, WeightsVersion


@dataclass(frozen=True)
class Sampling:
    """Per-call sampling settings (training and evaluation use the same engine with different ones)."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int
    # EOS is suppressed before this many tokens (length-controlled runs, benchmarks); the logprobs recorded for those
    # tokens are of that suppressed distribution, which is the one that sampled them.
    min_tokens: int = 0


class RolloutWorker:
    def __init__(self, model_path: str, dtype: str, cfg: RolloutConfig, seed: int):
        from vllm import LLM

        on_gpu = cfg.num_gpus > 0
        extra = ({"gpu_memory_utilization": cfg.gpu_memory_utilization} if on_gpu
                 else {"kv_cache_memory_bytes": int(cfg.kv_cache_gb * (1 << 30))})
        if cfg.weight_sync == "nccl":
            from vllm.config import WeightTransferConfig

            extra["weight_transfer_config"] = WeightTransferConfig(backend="nccl")
        self.llm = LLM(model=model_path, dtype=dtype, max_model_len=cfg.max_model_len, seed=seed,
                       enforce_eager=cfg.enforce_eager, tensor_parallel_size=cfg.tensor_parallel_size,
                       logprobs_mode="processed_logprobs", **extra)
        self.tokenizer = self.llm.get_tokenizer()
        self.version = 0

    def generate(self, requests: list[RolloutRequest], sampling: Sampling) -> list[Trajectory]:
        """`sampling.n` trajectories per request, grouped by request, each with the engine's logprobs and version."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, params = [], []
        for req in requests:
            ids = self.tokenizer(req.prompt_text, add_special_tokens=False)["input_ids"]
            for k in range(sampling.n):
                prompts.append(TokensPrompt(prompt_token_ids=ids))
                params.append(SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                                             max_tokens=sampling.max_tokens, min_tokens=sampling.min_tokens,
                                             logprobs=0, seed=req.seed + k))
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        trajectories = []
        for i, out in enumerate(outputs):
            req, sample = requests[i // sampling.n], out.outputs[0]
            trajectories.append(Trajectory(
                group_id=req.group_id, sample_index=i % sampling.n, problem=req.problem,
                prompt_ids=list(out.prompt_token_ids), response_ids=list(sample.token_ids),
                response_text=self.tokenizer.decode(sample.token_ids, skip_special_tokens=True),
                logprobs=[lp[tok].logprob for lp, tok in zip(sample.logprobs, sample.token_ids)],
                finish_reason=sample.finish_reason or "unknown", policy_version=self.version))
        return trajectories

    def load_weights(self, handle: WeightsVersion) -> int:
        """Verify, then load in place. Raises `WeightsIntegrityError` (and keeps the old weights) on a mismatch.

        With NCCL weight sync the bytes already arrived during the learner's broadcast; this only confirms the version.
        """
        if handle.path == "nccl":
            if self.version != handle.version:
                raise RuntimeError(f"NCCL push of version {handle.version} did not reach this engine "
                                   f"(still at {self.version})")
            return self.version
        directory = verify(handle)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(directory)})
        self.llm.reset_prefix_cache()  # cached KV of shared prompt prefixes was computed by the old weights
        self.version = handle.version
        return self.version

    # -- NCCL weight sync (GPU): driven by the learner through transport.nccl.RolloutFanoutClient ------------------
    def init_weight_transfer(self, init_info: dict) -> None:
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, update_info: dict) -> None:
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self, version: str | None) -> None:
        self.llm.finish_weight_update(version)
        self.llm.reset_prefix_cache()
        if version is not None:
            self.version = int(version)

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        """Stop the engine's own processes now rather than when the actor is killed."""
        self.llm.llm_engine.engine_core.shutdown()
