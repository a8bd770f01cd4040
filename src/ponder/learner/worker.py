"""The learner: one DeepSpeed data-parallel rank training the policy (GRPO, RLOO, REINFORCE++, GSPO, PPO; STaR's
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

import math
import random
from pathlib import Path

import torch

from ponder.envs.stats import episode_stats
from ponder.learner.advantages import (batch_normalised, gae, kl_returns, outcome_advantages, process_advantages,
                                       sample_rewards, token_moments)
from ponder.data.stream import split_even
from ponder.learner.batching import Packed, Values, pack, sample_key, shard_groups
from ponder.learner.rank import DTYPES, DeepSpeedRank
from ponder.learner.sft import encode_example, render_example
from ponder.learner.losses import entropy, kl_penalty, masked_sum, policy_loss, token_logprobs
from ponder.platform.config import AlgoConfig, LearnerConfig
from ponder.transport import TransportSpec, WeightSender, open_sender, reads_state
from ponder.types import Trajectory, WeightsVersion


class LearnerWorker(DeepSpeedRank):
    def __init__(self, model_path: str, dtype: str, cfg: LearnerConfig, algo: AlgoConfig, *, rank: int,
                 samples_per_step: int, temperature: float, seed: int):
        """Cheap: the group forms in `setup`, once rank 0 has said where it meets (`rendezvous_address`)."""
        super().__init__(model_path, dtype, cfg, rank=rank, samples_per_step=samples_per_step, seed=seed)
        self.algo, self.temperature = algo, temperature
        self.sender: WeightSender | None = None
        self.transport = ""

    def _load_model(self) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.model_path, dtype=DTYPES[self.dtype])

    def setup(self, master_addr: str, master_port: int) -> None:
        """Collective: join the group, build the engine, and with a KL term load the frozen reference model."""
        super().setup(master_addr, master_port)
        self.reference = None
        if self.algo.kl_coef > 0:
            self.reference = self._load_model().eval()
            self.reference.requires_grad_(False)
            self.reference.to(self.engine.device)

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
                    batch = part or order[:1]
                    tokens += sum(len(t.prompt_ids) + len(t.response_ids) for t in batch)
                    losses.append(self._supervised_step(batch))
        finally:
            self.engine.set_gradient_accumulation_boundary(None)
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
        after the last (the accumulation boundary is set explicitly, as everywhere in this learner). Returns the summed
        NLL."""
        total = 0.0
        for i, p in enumerate(micro):
            self.engine.set_gradient_accumulation_boundary(i == len(micro) - 1)
            logp, _ = self._logprobs(p, grad=True, temperature=temperature)
            nll = -masked_sum(logp, p.replay_mask.to(logp.device))
            self.engine.backward(weight * nll / normaliser, scale_wrt_gas=False)
            self.engine.step()
            total += float(nll.detach())
        return total

    def _demonstration_micro(self, demos: list[Trajectory]) -> list[Packed]:
        """Micro-batches of demonstrations, trained on with the replay term only."""
        return [pack([demos[i] for i in part], torch.zeros(len(part)), self.tokenizer.pad_token_id,
                     trained=[False] * len(part), replay=[True] * len(part), packed=self.cfg.packing)
                for part in self._micro(demos)]

    # -- training ---------------------------------------------------------------------------------------------------
    def train(self, *batches: list[Trajectory], demos: tuple[str, list] | None = None, values: Values | None = None,
              update: bool = True) -> dict[str, float]:
        """One training step on the scored batches: learner.num_minibatches optimizer steps per pass, ppo_epochs
        passes, every update clipped against the weights the step started from. `demos` = (template, problems):
        demonstrations replayed with the replay term only (algo.replay_data), this rank's share split over the
        mini-batches; `values`: the value model's, for ppo; `update` False: the rollout statistics only (PPO's
        value-model warm-up)."""
        everything = [t for batch in batches for t in batch]
        if not update:
            return rollout_stats(everything)
        mine = shard_groups(everything, self.cfg.num_ranks, self.rank)
        advantages, dense, trained = self._advantages(mine)
        groups = sorted({t.group_id for t in mine})
        shown = split_even(self._demonstrations(*demos)[self.rank :: self.cfg.num_ranks] if demos else [],
                           self.cfg.num_minibatches)
        minibatches = []
        for mb, mb_groups in enumerate(split_even(groups, self.cfg.num_minibatches)):
            selected = set(mb_groups)
            index = [i for i, t in enumerate(mine) if t.group_id in selected]
            parts = [[index[j] for j in part] for part in self._micro([mine[i] for i in index])]
            micro = [pack([mine[i] for i in part], advantages[part], self.tokenizer.pad_token_id,
                          [dense[i] for i in part] if dense else None, [trained[i] for i in part],
                          [trained[i] and mine[i].correct for i in part] if self.algo.replay_coef else None,
                          packed=self.cfg.packing,
                          values=[values[sample_key(mine[i])] for i in part] if values is not None else None)
                     for part in parts]
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
        """The estimator's outcome advantages [B] over the shaped rewards (`sample_rewards`: untrained samples get 0
        and stay out of group statistics), with per-step critic scores their dense token-level terms (times
        algo.process_coef), and which samples are trained on. reinforce_pp's and ppo's are the rewards themselves,
        turned into token advantages in `_before_updates`."""
        rewards, trained = sample_rewards(trajectories, self.algo)
        keep = [i for i, on in enumerate(trained) if on]
        advantages = torch.zeros(len(trajectories))
        if keep:
            gids = torch.tensor([trajectories[i].group_id for i in keep])
            advantages[keep] = outcome_advantages(rewards[keep], gids, self.algo)
        dense = None
        if self.algo.process_coef and any(t.step_scores for t in trajectories):
            dense = process_advantages([[] if t.masked else t.step_scores for t in trajectories],
                                       [t.group_id for t in trajectories],
                                       [len(t.response_ids) for t in trajectories])
            dense = [self.algo.process_coef * d for d in dense]
        return advantages, dense, trained

    def _before_updates(self, micro: list[Packed]) -> None:
        """Before the step's first update, on every micro-batch: the proximal logprobs (the weights the step starts
        from; skipped when a single update lets each forward use its own, detached), the reference model's logprobs,
        and the token advantages of reinforce_pp (returns, KL in the reward) and ppo (GAE over the value model's
        values), normalised over the whole batch, on every rank."""
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
        if a.name not in ("reinforce_pp", "ppo"):
            return
        for p in micro:
            if a.name == "ppo":
                p.advantages, _ = gae(p.advantages, p.values, p.response_mask, p.seq_ids, a.ppo.gamma, a.ppo.lam)
            elif a.kl_in_reward:
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

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()
        super().close()


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
