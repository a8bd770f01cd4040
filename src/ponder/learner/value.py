"""PPO's value model: one DeepSpeed data-parallel rank of the critic, separate actors from the policy's learner and
sized on their own (the `critic` section). The model is the policy's architecture with a scalar head on every
position (`AutoModelForTokenClassification`, one label), initialised from `algo.ppo.critic_model` or the policy.

Each step, before the policy trains: `values` gives the value of the state before every response token of the
step's samples (the ranks' shares gathered on rank 0). Then, beside the policy's step: `train` turns those values and
the rewards into GAE returns, the same way the policy's learner turns them into advantages (`advantages.gae`), and
fits the values to them with PPO's clipped value loss over the critic's own mini-batches and epochs. A plain class;
Ray is applied in `platform/cluster.py`.
"""

from __future__ import annotations

import torch

from ponder.data.stream import split_even
from ponder.learner.advantages import gae, mean_std, sample_rewards, token_moments
from ponder.learner.batching import Packed, Values, pack, sample_key, shard_groups
from ponder.learner.losses import masked_sum, value_loss
from ponder.learner.rank import DTYPES, DeepSpeedRank
from ponder.platform.config import AlgoConfig, LearnerConfig
from ponder.types import Trajectory


class ValueWorker(DeepSpeedRank):
    def __init__(self, model_path: str, dtype: str, cfg: LearnerConfig, algo: AlgoConfig, *, rank: int,
                 samples_per_step: int, seed: int):
        super().__init__(algo.ppo.critic_model or model_path, dtype, cfg, rank=rank,
                         samples_per_step=samples_per_step, seed=seed)
        self.algo = algo

    def _load_model(self) -> torch.nn.Module:
        from transformers import AutoModelForTokenClassification

        model = AutoModelForTokenClassification.from_pretrained(self.model_path, num_labels=1,
                                                                dtype=DTYPES[self.dtype])
        model.config.pad_token_id = self.tokenizer.pad_token_id
        return model

    def _values(self, p: Packed, grad: bool) -> torch.Tensor:
        """[B, L-1]: the value of the state before each target."""
        with torch.set_grad_enabled(grad):
            return self.engine(**p.model_inputs(self.engine.device)).logits[:, :-1, 0].float()

    def _packed(self, trajectories: list[Trajectory], values: Values | None = None
                ) -> list[tuple[Packed, list[Trajectory]]]:
        """Samples in micro-batches with their trajectories; each sample's reward on its tokens as `advantages`
        (length shaping applied, untrained samples off the mask, as the policy's learner has them)."""
        rewards, trained = sample_rewards(trajectories, self.algo)
        out = []
        for part in self._micro(trajectories):
            chosen = [trajectories[i] for i in part]
            out.append((pack(chosen, rewards[part], self.tokenizer.pad_token_id, trained=[trained[i] for i in part],
                             packed=self.cfg.packing,
                             values=[values[sample_key(t)] for t in chosen] if values is not None else None), chosen))
        return out

    def values(self, *batches: list[Trajectory]) -> Values | None:
        """Collective: the values of every sample's response positions under the current value model. Each rank
        computes its share of the groups; rank 0 returns them all, keyed by (group_id, sample_index)."""
        import torch.distributed as dist

        mine = shard_groups([t for batch in batches for t in batch], self.cfg.num_ranks, self.rank)
        out: Values = {}
        for p, trajectories in self._packed(mine):
            v = self._values(p, grad=False).cpu()
            out.update({sample_key(t): p.response(v, i).clone() for i, t in enumerate(trajectories)})
        shares: list = [None] * self.cfg.num_ranks
        dist.all_gather_object(shares, out)
        return {k: v for share in shares for k, v in share.items()} if self.rank == 0 else None

    def train(self, *batches: list[Trajectory], values: Values) -> dict[str, float]:
        """Collective: fit the value model to the GAE returns of the step's samples (from `values`, this step's
        values before any update): critic.num_minibatches optimizer steps per pass, critic.ppo_epochs passes."""
        import torch.distributed as dist

        ppo = self.algo.ppo
        mine = shard_groups([t for batch in batches for t in batch], self.cfg.num_ranks, self.rank)
        minibatches = [[p for p, _ in self._packed([t for t in mine if t.group_id in chosen], values)]
                       for chosen in map(set, split_even(sorted({t.group_id for t in mine}), self.cfg.num_minibatches))]
        everything = [p for micro in minibatches for p in micro]
        for p in everything:
            _, p.returns = gae(p.advantages, p.values, p.response_mask, p.seq_ids, ppo.gamma, ppo.lam)
        # explained variance of the returns by the values the step started from, over every rank's tokens
        moments = torch.stack([torch.zeros(2, 3, dtype=torch.float64)] + [
            torch.stack([token_moments(p.returns, p.response_mask), token_moments(p.returns - p.values,
                                                                                  p.response_mask)])
            for p in everything]).sum(0)
        if self.cfg.num_ranks > 1:
            dist.all_reduce(moments)
        metrics: dict[str, list[float]] = {}
        for _ in range(self.cfg.ppo_epochs):
            for micro in minibatches:
                self._step(micro, metrics)
        out = {f"critic/{k}": sum(v) / len(v) for k, v in metrics.items()}
        (return_mean, return_std), (_, error_std) = mean_std(moments[0]), mean_std(moments[1])
        out["critic/explained_variance"] = 1.0 - error_std**2 / max(return_std**2, 1e-8)
        out["critic/return_mean"] = return_mean
        return out

    def _step(self, micro: list[Packed], metrics: dict[str, list[float]]) -> None:
        """One optimizer step of the clipped value loss over `micro`."""
        tokens = float(sum(p.response_mask.sum() for p in micro).clamp(min=1))
        total = 0.0
        for i, p in enumerate(micro):
            v = self._values(p, grad=True)
            device = v.device
            mask = p.response_mask.to(device)
            loss, stats = value_loss(v, p.values.to(device), p.returns.to(device), mask, self.algo.ppo.value_clip,
                                     tokens)
            self.engine.set_gradient_accumulation_boundary(i == len(micro) - 1)
            self.engine.backward(loss, scale_wrt_gas=False)
            self.engine.step()
            total += float(loss.detach())
            stats["value_mean"] = float(masked_sum(v.detach(), mask) / mask.sum().clamp(min=1))
            for k, value in stats.items():
                metrics.setdefault(k, []).append(value)
        self.engine.set_gradient_accumulation_boundary(None)
        metrics.setdefault("value_loss", []).append(total)  # the mini-batch's
