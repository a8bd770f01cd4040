"""The learner: one DeepSpeed data-parallel rank training the policy (GRPO, RLOO, REINFORCE++, GSPO; STaR's
supervised steps).

Receives scored trajectory batches (Ray resolves the ObjectRefs it is handed; the driver never holds them), computes
the algorithm's advantages, takes the proximal (and reference) logprobs once before any update, and steps the ZeRO
optimizer over mini-batches and PPO epochs with micro-batch gradient accumulation (micro-batches by sequence count
and token budget, padded or packed), reporting the engine/learner logprob mismatch. Rank 0
publishes the full weights through the weight transport placement chose (`ponder.transport`) after each step; the
ranks meet at rank 0's node address, on any nodes. A plain class; Ray is applied in
`platform/cluster.py`. Talks to: transport (weights out), types (trajectories in). Never imports the actors.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch

from ponder.envs.stats import episode_stats
from ponder.learner.advantages import (batch_normalised, kl_returns, length_shaping, outcome_advantages,
                                       process_advantages, token_moments)
from ponder.data.stream import split_even
from ponder.learner.batching import Packed, micro_batches, pack, shard_groups
from ponder.learner.sft import encode_example, render_example
from ponder.learner.losses import entropy, kl_penalty, masked_sum, policy_loss, token_logprobs
from ponder.storage.checkpoints import CheckpointError, CheckpointTarget
from ponder.platform.config import AlgoConfig, LearnerConfig, parse_cores
from ponder.seeding import rng_state, set_rng_state
from ponder.transport import TransportSpec, WeightSender, node_address, open_sender, reads_state, this_node
from ponder.types import Trajectory, WeightsVersion

CALLER_STATE = "driver.json"  # inside a checkpoint: the caller's state, opaque here (the driver's loop position)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LearnerWorker:
    def __init__(self, model_path: str, dtype: str, cfg: LearnerConfig, algo: AlgoConfig, *, rank: int,
                 samples_per_step: int, temperature: float, seed: int):
        """Cheap: the group forms in `setup`, once rank 0 has said where it meets (`rendezvous_address`)."""
        self.args = (model_path, dtype, samples_per_step, seed)
        self.cfg, self.algo, self.rank, self.temperature = cfg, algo, rank, temperature
        self.sender: WeightSender | None = None
        self.transport = ""
        self.scratch: Path | None = None  # checkpoint staging on this rank's node, once set up

    def rendezvous_address(self) -> tuple[str, int]:
        """Rank 0: this node's address and a port free on it, where the group's ranks meet (on any node)."""
        return node_address()

    def node_id(self) -> str:
        """The Ray node this rank landed on."""
        return this_node()

    def setup(self, master_addr: str, master_port: int) -> None:
        """Collective: join the group at rank 0's address, then build the DeepSpeed engine."""
        model_path, dtype, samples_per_step, seed = self.args
        cfg, algo, rank = self.cfg, self.algo, self.rank
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(cfg.num_ranks), LOCAL_RANK="0")
        if cfg.cpu_bind is not None:  # keep off the cores given to the engines (they overlap in streaming modes)
            os.sched_setaffinity(0, parse_cores(cfg.cpu_bind))
        torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(seed + rank)
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.on_gpu = torch.cuda.is_available()
        deepspeed.init_distributed(dist_backend="nccl" if self.on_gpu else "gloo")
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.samples_per_minibatch = samples_per_step // cfg.num_ranks // cfg.num_minibatches
        self.grad_accum = math.ceil(self.samples_per_minibatch / cfg.micro_batch_size)
        self._build_engine()
        self.reference = None
        if algo.kl_coef > 0:
            self.reference = AutoModelForCausalLM.from_pretrained(model_path, dtype=_DTYPES[dtype]).eval()
            self.reference.requires_grad_(False)
            self.reference.to(self.engine.device)
        # checkpoint staging on this rank's node (the master port names the group)
        self.scratch = Path(tempfile.gettempdir()) / f"ponder-learner-{master_port}"

    def _build_engine(self) -> None:
        """The DeepSpeed engine over the initial model (`model_path`), with a fresh optimizer."""
        import deepspeed
        from transformers import AutoModelForCausalLM

        model_path, dtype, _, _ = self.args
        cfg = self.cfg
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=_DTYPES[dtype])
        if cfg.gradient_checkpointing:  # acts in training mode only; the policy's dropout stays as configured (0)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
            model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                      weight_decay=cfg.weight_decay)
        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
            "gradient_accumulation_steps": self.grad_accum,
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": dtype == "bfloat16"},
            "fp16": {"enabled": dtype == "float16"},
            "steps_per_print": 1 << 30,
        }
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)

    def reset(self) -> None:
        """Collective: back to the initial model with a fresh optimizer (STaR's restart from the base model)."""
        self.engine.destroy()
        self.engine = None
        self._build_engine()
        if hasattr(self.sender, "rebind"):  # NCCL broadcasts from the module it was opened with
            self.sender.rebind(self.engine.module)

    def train_supervised(self, *batches: list[Trajectory], epochs: int = 1, seed: int = 0) -> dict[str, float]:
        """Fine-tune on trajectories as demonstrations (STaR's kept rationales): the token-mean NLL of their policy
        tokens over each mini-batch, `epochs` shuffled passes, mini-batches of at most the RL step's size. Every rank
        trains on its share of the examples for the same number of optimizer steps (collective)."""
        everything = [t for batch in batches for t in batch]
        mine = everything[self.rank :: self.cfg.num_ranks] or everything
        per_epoch = math.ceil(math.ceil(len(everything) / self.cfg.num_ranks) / self.samples_per_minibatch)
        rng = random.Random(seed + self.rank)
        losses: list[float] = []
        tokens = 0
        try:
            for _ in range(epochs):
                order = rng.sample(mine, len(mine))
                for part in split_even(order, per_epoch):
                    batch = sorted(part or order[:1], key=lambda t: len(t.prompt_ids) + len(t.response_ids))
                    tokens += sum(len(t.prompt_ids) + len(t.response_ids) for t in batch)
                    losses.append(self._supervised_step(batch))
        finally:
            self.engine.set_gradient_accumulation_boundary(None)  # back to DeepSpeed's own count (GRPO steps)
        return {"train/sft_loss": sum(losses) / len(losses), "train/sft_steps": float(len(losses)),
                "train/tokens": float(tokens),  # this rank's share (all of it on one rank)
                "grad_norm": float(self.engine.get_global_grad_norm() or 0.0)}

    def _supervised_step(self, batch: list[Trajectory]) -> float:
        """One optimizer step on the token-mean NLL of `batch`'s policy tokens (at temperature 1); returns it."""
        micro = self._demonstration_micro(batch)
        tokens = float(sum(p.replay_mask.sum() for p in micro).clamp(min=1))
        return self._demonstration_steps(micro, 1.0, tokens, temperature=1.0) / tokens

    def _demonstration_steps(self, micro: list[Packed], weight: float, normaliser: float,
                             temperature: float | None = None) -> float:
        """Backward and step `weight` × NLL(replay_mask tokens) / `normaliser` over `micro`, the optimizer stepping
        after the last (the accumulation boundary is set here: these micro-batches are not the ones DeepSpeed
        counts on). Returns the summed NLL."""
        total = 0.0
        for i, p in enumerate(micro):
            self.engine.set_gradient_accumulation_boundary(i == len(micro) - 1)
            logp, _ = self._logprobs(p, grad=True, temperature=temperature)
            nll = -masked_sum(logp, p.replay_mask.to(logp.device))
            self.engine.backward(weight * nll / normaliser, scale_wrt_gas=False)
            self.engine.step()
            total += float(nll.detach())
        return total

    def _micro(self, trajectories: list[Trajectory]) -> list[list[int]]:
        """Positions of `trajectories` (in length order) in micro-batches by sequence count and token budget."""
        lengths = [len(t.prompt_ids) + len(t.response_ids) for t in trajectories]
        return micro_batches(lengths, self.cfg.micro_batch_size, self.cfg.micro_batch_tokens, self.cfg.packing)

    def _demonstration_micro(self, demos: list[Trajectory]) -> list[Packed]:
        """Micro-batches of demonstrations, trained on with the replay term only."""
        demos = sorted(demos, key=lambda t: len(t.prompt_ids) + len(t.response_ids))
        return [pack([demos[i] for i in part], torch.zeros(len(part)), self.tokenizer.pad_token_id,
                     trained=[False] * len(part), replay=[True] * len(part), packed=self.cfg.packing)
                for part in self._micro(demos)]

    # -- training ---------------------------------------------------------------------------------------------------
    def train(self, *batches: list[Trajectory], demos: tuple[str, list] | None = None) -> dict[str, float]:
        """One training step on the scored batches: learner.num_minibatches optimizer steps per pass, ppo_epochs
        passes, every update clipped against the weights the step started from. `demos` = (template, problems):
        demonstrations replayed with the replay term only (algo.replay_data), this rank's share split over the
        mini-batches."""
        everything = [t for batch in batches for t in batch]
        mine = shard_groups(everything, self.cfg.num_ranks, self.rank)
        advantages, dense, trained = self._advantages(mine)
        groups = sorted({t.group_id for t in mine})
        shown = split_even(self._demonstrations(*demos)[self.rank :: self.cfg.num_ranks] if demos else [],
                           self.cfg.num_minibatches)
        minibatches = []
        for mb, mb_groups in enumerate(split_even(groups, self.cfg.num_minibatches)):
            selected = set(mb_groups)
            # micro-batches of similar lengths: long-tailed responses padded to a short one's length cost little
            # (the loss is a token sum over the mini-batch, so how samples are split does not change the gradient)
            index = sorted((i for i, t in enumerate(mine) if t.group_id in selected),
                           key=lambda i: len(mine[i].prompt_ids) + len(mine[i].response_ids))
            parts = [[index[j] for j in part] for part in self._micro([mine[i] for i in index])]
            micro = [pack([mine[i] for i in part], advantages[part], self.tokenizer.pad_token_id,
                          [dense[i] for i in part] if dense else None, [trained[i] for i in part],
                          [trained[i] and mine[i].correct for i in part] if self.algo.replay_coef else None,
                          packed=self.cfg.packing) for part in parts]
            minibatches.append((micro, self._demonstration_micro(shown[mb])))
        metrics: dict[str, list[float]] = {}
        self._before_updates([p for micro, _ in minibatches for p in micro])
        for _ in range(self.cfg.ppo_epochs):
            for micro, extra in minibatches:
                self._minibatch_step(micro, metrics, demos=extra)
        out = {k: sum(v) / len(v) for k, v in metrics.items()}
        out.update(grad_norm=float(self.engine.get_global_grad_norm() or 0.0), **rollout_stats(everything))
        if self.algo.overlong_filter:  # truncated samples the step left out of the loss (every rank sees every sample)
            out["rollout/overlong_filtered"] = float(sum(t.finish_reason == "length" and not t.masked
                                                         for t in everything))
        return out

    def _advantages(self, trajectories: list[Trajectory]
                    ) -> tuple[torch.Tensor, list[torch.Tensor] | None, list[bool]]:
        """The estimator's outcome advantages [B], and with per-step critic scores their dense token-level terms
        (times algo.process_coef), and which samples are trained on. RewardPool get the length-control terms first.
        Masked samples (reward infrastructure failed), and with overlong filtering truncated ones, get 0, stay out of
        group stats and out of the loss. reinforce_pp's are the rewards themselves, normalised in `_before_updates`."""
        a = self.algo
        keep = [i for i, t in enumerate(trajectories)
                if not t.masked and not (a.overlong_filter and t.finish_reason == "length")]
        advantages = torch.zeros(len(trajectories))
        dense = None
        if keep:
            rewards = torch.tensor([trajectories[i].reward for i in keep], dtype=torch.float32)
            if a.overlong_buffer or a.length_penalty or a.budget_penalty:
                lengths = torch.tensor([len(trajectories[i].response_ids) for i in keep], dtype=torch.float32)
                caps = torch.tensor([trajectories[i].max_tokens or len(trajectories[i].response_ids) for i in keep],
                                    dtype=torch.float32).clamp(min=1)
                forced = torch.tensor([float(trajectories[i].forced_answer) for i in keep])
                rewards = rewards + length_shaping(lengths, caps, forced, a)
            gids = torch.tensor([trajectories[i].group_id for i in keep])
            advantages[keep] = outcome_advantages(rewards, gids, a)
        if self.algo.process_coef and any(t.step_scores for t in trajectories):
            dense = process_advantages([[] if t.masked else t.step_scores for t in trajectories],
                                       [t.group_id for t in trajectories],
                                       [len(t.response_ids) for t in trajectories])
            dense = [self.algo.process_coef * d for d in dense]
        kept = set(keep)
        return advantages, dense, [i in kept for i in range(len(trajectories))]

    def _before_updates(self, micro: list[Packed]) -> None:
        """Before the step's first update, on every micro-batch: the proximal logprobs (the weights the step starts
        from; skipped when a single update lets each forward use its own, detached), the reference model's logprobs,
        and for reinforce_pp the token returns (KL in the reward) normalised over the whole batch, on every rank."""
        a = self.algo
        single_update = self.cfg.num_minibatches == 1 and self.cfg.ppo_epochs == 1 and not a.kl_in_reward
        for p in micro:
            if not single_update:
                p.prox_logprobs = self._logprobs(p, grad=False)[0]
            if self.reference is not None:
                with torch.no_grad():
                    device = self.engine.device
                    logits = self.reference(**p.model_inputs(device)).logits[:, :-1]
                    p.ref_logprobs = token_logprobs(logits / self.temperature, p.targets.to(device))
        if a.name != "reinforce_pp":
            return
        for p in micro:
            if a.kl_in_reward:
                kl = kl_penalty(p.prox_logprobs, p.ref_logprobs, a.kl_estimator).cpu()
                p.advantages = kl_returns(p.advantages, kl, p.response_mask, a.kl_coef)
        moments = torch.stack([torch.zeros(3, dtype=torch.float64)]
                              + [token_moments(p.advantages, p.response_mask) for p in micro]).sum(0)
        if self.cfg.num_ranks > 1:  # one normalisation for the whole batch, whichever rank trains a sample
            import torch.distributed as dist

            dist.all_reduce(moments)
        for p in micro:
            p.advantages = batch_normalised(p.advantages, p.response_mask, moments)

    def _minibatch_step(self, micro: list[Packed], metrics: dict[str, list[float]], demos: list[Packed] = ()) -> None:
        """One optimizer step over `micro`. The clipped ratio is taken against the proximal policy (the weights the
        step started from: `prox_logprobs`, or with a single update this forward's own, detached);
        `behaviour_correction` reweights or masks for the engine's behaviour logprobs, which may be versions older.
        `demos`: demonstrations' micro-batches, trained with the replay term only, after the samples'. The
        accumulation boundary is set explicitly (micro-batches by token budget vary in number)."""
        tokens = float(sum(p.response_mask.sum() for p in micro).clamp(min=1))
        sequences = float(max(sum(p.num_trained_sequences for p in micro), 1))
        replay_tokens = float(sum((p.replay_mask.sum() for p in [*micro, *demos] if p.replay_mask is not None),
                                  torch.tensor(0.0)).clamp(min=1))
        for i, p in enumerate(micro):
            logp, logits = self._logprobs(p, grad=True)
            device = logp.device
            prox_logp = logp.detach() if p.prox_logprobs is None else p.prox_logprobs
            mask = p.response_mask.to(device)
            loss, stats = policy_loss(logp, prox_logp, p.behaviour_logprobs.to(device), p.advantages.to(device), mask,
                                      p.seq_ids.to(device), self.algo, tokens, sequences)
            stats["pg_loss"] = float(loss.detach())
            if p.replay_mask is not None:  # RL with a replay of verified successes: their NLL, token-mean
                nll = -masked_sum(logp, p.replay_mask.to(device))
                loss = loss + self.algo.replay_coef * nll / replay_tokens
                if p.replay_mask.any():
                    metrics.setdefault("train/replay_loss", []).append(float(nll.detach() / p.replay_mask.sum()))
            ent = entropy(logits)
            if self.algo.entropy_coef:
                loss = loss - self.algo.entropy_coef * masked_sum(ent, mask) / tokens
            if p.ref_logprobs is not None:
                kl = kl_penalty(logp, p.ref_logprobs, self.algo.kl_estimator)
                if not self.algo.kl_in_reward:
                    loss = loss + self.algo.kl_coef * masked_sum(kl, mask) / tokens
                stats["kl"] = float(masked_sum(kl.detach(), mask) / mask.sum().clamp(min=1))
            self.engine.set_gradient_accumulation_boundary(i == len(micro) - 1 and not demos)
            self.engine.backward(loss, scale_wrt_gas=False)
            self.engine.step()
            n = mask.sum().clamp(min=1)
            stats.update(loss=float(loss.detach()), entropy=float(masked_sum(ent.detach(), mask) / n),
                         logprob_mismatch=float(masked_sum((logp.detach() - p.behaviour_logprobs.to(device))
                                                           .abs(), mask) / n))
            for k, v in stats.items():
                metrics.setdefault(f"train/{k}", []).append(v)
        if demos:
            nll = self._demonstration_steps(demos, self.algo.replay_coef, replay_tokens)
            metrics.setdefault("train/replay_data_loss", []).append(nll / float(sum(p.replay_mask.sum() for p in demos)))
        self.engine.set_gradient_accumulation_boundary(None)  # back to DeepSpeed's own count

    def _demonstrations(self, template: str, problems: list) -> list[Trajectory]:
        """Worked solutions (or exported completions) as trajectories the replay term trains on; negative group ids
        keep them apart from the step's samples."""
        out = []
        for i, problem in enumerate(problems):
            prompt_ids, ids, policy = encode_example(self.tokenizer, *render_example(self.tokenizer, problem, template))
            out.append(Trajectory(-1 - i, 0, problem, prompt_ids, ids, "", [0.0] * len(ids), "stop", -1,
                                  sampled_mask=policy, correct=True))
        return out

    def _logprobs(self, p: Packed, grad: bool, temperature: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token logprobs [B, L-1] and logits under the current policy, at the sampling temperature unless given."""
        device = self.engine.device
        with torch.set_grad_enabled(grad):
            logits = self.engine(**p.model_inputs(device)).logits
            logits = logits[:, :-1] / (temperature or self.temperature)
            return token_logprobs(logits, p.targets.to(device)), logits

    def forward_logprobs(self, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
        """The current policy's logprobs of `response_ids` after `prompt_ids` (for checking the engine's weights)."""
        traj = Trajectory(0, 0, None, prompt_ids, response_ids, "", [0.0] * len(response_ids), "", 0)  # type: ignore
        p = pack([traj], torch.zeros(1), self.tokenizer.pad_token_id)
        logp, _ = self._logprobs(p, grad=False)
        return logp[0][p.response_mask[0].bool()].tolist()

    # -- weights out --------------------------------------------------------------------------------------------------
    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full weights on rank 0 (gathered across ranks under ZeRO-3); None on other ranks. Collective."""
        import deepspeed

        params = list(self.engine.module.parameters())
        enabled = self.cfg.zero_stage == 3
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=enabled):
            if self.rank != 0:
                return None
            return {k: v.detach().to("cpu", copy=True) for k, v in self.engine.module.state_dict().items()}

    def open_transport(self, spec: TransportSpec) -> None:
        """Every rank: the weight transport the placement chose; rank 0 opens its sender (replacing any before)."""
        if self.sender is not None:
            self.sender.close()
        self.transport = spec.kind
        self.sender = open_sender(spec, self.engine.module) if self.rank == 0 else None

    def publish_weights(self, version: int) -> WeightsVersion | None:
        """Every rank must call this (ZeRO-3 gathers); rank 0 returns the handle the engines load."""
        if not self.transport:
            raise RuntimeError("no weight transport: Cluster.connect_weight_sync opens one once the actors are placed")
        state = self.full_state_dict() if reads_state(self.transport) else None
        return self.sender.publish(version, state) if self.sender is not None else None

    def save_hf(self, out_dir: str) -> str | None:
        state = self.full_state_dict()
        if state is None:
            return None
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        self.engine.module.save_pretrained(out_dir, state_dict=state)
        self.tokenizer.save_pretrained(out_dir)
        return out_dir

    # -- checkpoints --------------------------------------------------------------------------------------------------
    def save_checkpoint(self, target: CheckpointTarget, step: int, caller_state: dict, meta: dict,
                        export_hf: bool) -> str | None:
        """Collective. Every rank writes its DeepSpeed state (ZeRO shards of model, optimizer and scheduler) and its
        RNG state into a staging directory on its own node and uploads it from there (no shared disk needed); rank 0
        adds the Hugging Face export and `caller_state` (JSON, returned as it was by `load_checkpoint`), and writes the
        manifest, with `meta`, once every rank's files are up. Returns the checkpoint's URI on rank 0, None elsewhere."""
        import torch.distributed as dist

        store, staging = target.store(), self.scratch / f"save-{step:08d}-rank{self.rank}"
        try:
            self.engine.save_checkpoint(str(staging / "deepspeed"), tag="state", save_latest=False)
            (staging / "rng").mkdir(parents=True, exist_ok=True)
            torch.save(rng_state(), staging / "rng" / f"rank_{self.rank}.pt")
            state = self.full_state_dict() if export_hf else None  # collective under ZeRO-3
            if self.rank == 0:
                if state is not None:
                    self.engine.module.save_pretrained(staging / "hf", state_dict=state)
                    self.tokenizer.save_pretrained(staging / "hf")
                (staging / CALLER_STATE).write_text(json.dumps(caller_state))
                store.begin(step)
            dist.barrier()  # nothing is uploaded before rank 0 has cleared an earlier save of this step
            try:
                part: dict | str = store.upload(step, staging)
            except Exception as e:  # every rank must reach the gather, or the others wait for ever
                part = f"rank {self.rank}: {type(e).__name__}: {e}"
            parts: list = [None] * self.cfg.num_ranks
            dist.all_gather_object(parts, part)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        failed = [p for p in parts if isinstance(p, str)]
        if failed:
            raise CheckpointError(f"checkpoint of step {step} not saved, an upload failed: {'; '.join(failed)}")
        if self.rank != 0:
            return None
        return target.uri(store.commit(step, parts, meta))

    def load_checkpoint(self, target: CheckpointTarget, name: str) -> dict:
        """Collective. Each rank downloads and verifies the checkpoint, restores its DeepSpeed state and RNG; returns
        the caller's state saved with it."""
        local = self.scratch / f"load-{self.rank}"
        shutil.rmtree(local, ignore_errors=True)
        try:
            target.store().load(name, local)
            self.engine.load_checkpoint(str(local / "deepspeed"), tag="state")
            set_rng_state(torch.load(local / "rng" / f"rank_{self.rank}.pt"))
            return json.loads((local / CALLER_STATE).read_text())
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def rollout_stats(trajectories: list[Trajectory]) -> dict[str, float]:
    """Reward, accuracy, length and thinking statistics of one step's samples (and of its episodes, if multi-turn)."""
    n = len(trajectories)
    rewards = torch.tensor([t.reward for t in trajectories])
    lengths = torch.tensor([len(t.response_ids) for t in trajectories], dtype=torch.float32)
    thinking = [t.thinking_tokens if t.thinking_tokens is not None else len(t.response_ids) for t in trajectories]
    terms = sorted({name for t in trajectories for name in t.reward_terms})
    per_reward = {f"rollout/reward/{name}": sum(t.reward_terms.get(name, 0.0) for t in trajectories) / n
                  for name in terms}  # each reward function's unweighted mean term
    return per_reward | episode_stats(trajectories) | {
        "rollout/reward_mean": float(rewards.mean()), "rollout/reward_std": float(rewards.std(unbiased=False)),
        "rollout/accuracy": sum(t.correct for t in trajectories) / n,
        "rollout/response_len_mean": float(lengths.mean()), "rollout/response_len_max": float(lengths.max()),
        "rollout/response_len_p50": float(lengths.quantile(0.5)),
        "rollout/response_len_p90": float(lengths.quantile(0.9)),
        "rollout/truncated_frac": sum(t.finish_reason == "length" for t in trajectories) / n,
        # thinking: tokens before </think> (the whole response when thinking never closed); answer: the rest
        "rollout/thinking_tokens_mean": sum(thinking) / n,
        "rollout/answer_tokens_mean": float(lengths.sum() - sum(thinking)) / n,
        "rollout/forced_answer_frac": sum(t.forced_answer for t in trajectories) / n,
        "rollout/environment_tokens": float(sum(len(t.sampled_mask) - sum(t.sampled_mask) for t in trajectories)),
        "rollout/tokens": float(lengths.sum()),
        "train/tokens": float(sum(len(t.prompt_ids) + len(t.response_ids) for t in trajectories)),
        # samples whose tokens came from more than one policy version (partial rollouts across a weight update)
        "rollout/multi_version_frac": sum(len(set(t.token_versions)) > 1 for t in trajectories) / n,
    }
