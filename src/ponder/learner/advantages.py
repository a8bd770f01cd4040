"""Advantage estimators: group-relative (GRPO, Dr. GRPO), leave-one-out (RLOO), REINFORCE++'s batch-normalised
returns with an optional per-token KL in the reward, dense process terms, and the length-control reward terms. Pure
functions of tensors; shapes in the docstrings."""

from __future__ import annotations

import torch

from ponder.platform.config import AlgoConfig


def grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, norm_by_std: bool = True,
                    eps: float = 1e-6) -> torch.Tensor:
    """Each sample's reward minus its group's mean, divided by the group's std unless `norm_by_std` is False
    (Dr. GRPO: no std scaling, so near-uniform groups are not blown up).

    rewards: [B] float; group_ids: [B] int (samples of one prompt share an id). Returns [B].
    Std is the unbiased sample std (as in the GRPO paper's implementation); a group of one gets advantage 0.

    >>> grpo_advantages(torch.tensor([1., 0., 0., 1.]), torch.tensor([0, 0, 0, 0]))
    tensor([ 0.8660, -0.8660, -0.8660,  0.8660])
    """
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=rewards.dtype).index_add_(0, inverse, rewards)
    means = sums / counts
    centered = rewards - means[inverse]
    if not norm_by_std:
        return centered
    sq = torch.zeros(len(counts), dtype=rewards.dtype).index_add_(0, inverse, centered**2)
    std = torch.sqrt(sq / (counts - 1).clamp(min=1))
    return centered / (std[inverse] + eps)


def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """RLOO: each sample's reward minus the mean reward of the *other* samples of its group, n/(n-1)·(r - mean).
    rewards: [B] float; group_ids: [B] int. Returns [B]; a group of one gets 0.

    >>> rloo_advantages(torch.tensor([1., 0., 0., 1., 5.]), torch.tensor([0, 0, 0, 0, 1]))
    tensor([ 0.6667, -0.6667, -0.6667,  0.6667,  0.0000])
    """
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=rewards.dtype).index_add_(0, inverse, rewards)
    n = counts[inverse].to(rewards.dtype)
    others = (sums[inverse] - rewards) / (n - 1).clamp(min=1)
    return torch.where(n > 1, rewards - others, torch.zeros_like(rewards))


def outcome_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, a: AlgoConfig) -> torch.Tensor:
    """The per-sample advantage of `a.name`'s estimator, [B] -> [B]: group-normalised for grpo and gspo (centred
    only with norm_adv_by_std=false), leave-one-out for rloo, the reward itself for reinforce_pp (normalised later
    over the whole batch's tokens, `batch_normalised`)."""
    if a.name == "rloo":
        return rloo_advantages(rewards, group_ids)
    if a.name == "reinforce_pp":
        return rewards.clone()
    return grpo_advantages(rewards, group_ids, a.norm_adv_by_std)


def kl_returns(token_rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, coef: float) -> torch.Tensor:
    """REINFORCE++ with the KL in the reward: each token's return is the outcome reward minus `coef` times the KL
    estimates of this token and every later one (γ = 1), G_t = R - coef·Σ_{s≥t} kl_s. token_rewards: [B, T], the
    outcome reward on each response target; kl, mask: [B, T]. Returns [B, T], 0 outside the mask.

    >>> on = torch.tensor([[1., 1., 1., 0.]])
    >>> kl_returns(on, torch.tensor([[0.1, 0.2, 0.3, 9.]]), on, coef=1.0)
    tensor([[0.4000, 0.5000, 0.7000, 0.0000]])
    """
    per_token = torch.where(mask != 0, kl * mask, torch.zeros_like(kl))
    to_go = torch.flip(torch.cumsum(torch.flip(per_token, [-1]), -1), [-1])
    return torch.where(mask != 0, token_rewards - coef * to_go, torch.zeros_like(token_rewards))


def token_moments(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[count, sum, sum of squares] of values over the mask's targets: [B, T] -> [3] (summed across micro-batches
    and ranks, then handed to `batch_normalised`)."""
    on = mask != 0
    v = torch.where(on, values, torch.zeros_like(values)).double()
    return torch.stack([on.sum().double(), v.sum(), (v * v).sum()])


def batch_normalised(values: torch.Tensor, mask: torch.Tensor, moments: torch.Tensor, eps: float = 1e-6
                     ) -> torch.Tensor:
    """REINFORCE++'s global advantage normalisation: (x - mean) / (std + eps) with the mean and (population) std of
    the whole batch's trained tokens, `moments` = `token_moments` summed over it. [B, T] -> [B, T], 0 off the mask.

    >>> x, m = torch.tensor([[1., 3., 7.]]), torch.tensor([[1., 1., 0.]])
    >>> batch_normalised(x, m, token_moments(x, m), eps=0.0)
    tensor([[-1.,  1.,  0.]])
    """
    count, total, squares = moments.tolist()
    mean = total / max(count, 1.0)
    std = max(squares / max(count, 1.0) - mean * mean, 0.0) ** 0.5
    return torch.where(mask != 0, (values - mean) / (std + eps), torch.zeros_like(values))


def process_advantages(step_scores: list[list[tuple[int, float]]], group_ids: list[int], lengths: list[int],
                       eps: float = 1e-6) -> list[torch.Tensor]:
    """Dense advantages from per-step critic scores (DeepSeekMath's process supervision for GRPO).

    Each step score is normalised by the mean and std of all step scores in its group (population std; a group with
    fewer than two steps, or no spread, gets 0); a token's advantage is the sum of the normalised scores of its own
    step and of every later step of its sample. step_scores[i]: (end, score) pairs of sample i, `end` the exclusive
    response-token index where the step stops, ascending; lengths[i]: its response length. Returns one [lengths[i]]
    float tensor per sample; tokens after the last step, and samples without steps, get 0.

    Two samples of one group, each a good step then a bad one: scores 1, 0, 1, 0 normalise to +1, -1, +1, -1; a token
    of a first step gets +1 - 1 = 0, a token of a second step -1, and a token after the last step 0:

    >>> out = process_advantages([[(1, 1.0), (3, 0.0)], [(2, 1.0), (3, 0.0)]], [0, 0], [4, 3])
    >>> [[round(x, 3) + 0.0 for x in a.tolist()] for a in out]
    [[0.0, -1.0, -1.0, 0.0], [0.0, 0.0, -1.0]]
    """
    scores = [torch.tensor([s for _, s in steps], dtype=torch.float32) for steps in step_scores]
    normalised = [torch.zeros(len(s)) for s in scores]
    for gid in set(group_ids):
        members = [i for i, g in enumerate(group_ids) if g == gid and len(scores[i])]
        pooled = torch.cat([scores[i] for i in members]) if members else torch.zeros(0)
        if len(pooled) < 2 or float(pooled.std(unbiased=False)) < eps:
            continue
        mean, std = pooled.mean(), pooled.std(unbiased=False)
        for i in members:
            normalised[i] = (scores[i] - mean) / (std + eps)
    out = []
    for steps, norm, length in zip(step_scores, normalised, lengths):
        token_adv = torch.zeros(length)
        start = 0
        to_go = torch.flip(torch.cumsum(torch.flip(norm, [0]), 0), [0])  # sum over this step and the later ones
        for (end, _), value in zip(steps, to_go):
            token_adv[start:min(end, length)] = value
            start = end
        out.append(token_adv)
    return out


def length_shaping(lengths: torch.Tensor, caps: torch.Tensor, forced: torch.Tensor, a: AlgoConfig) -> torch.Tensor:
    """Reward terms for length control ("finish before the time-out"), added to each sample's reward. [B] -> [B].

    DAPO's soft overlong punishment: 0 up to `cap - algo.overlong_buffer` tokens, then falling linearly to
    `-algo.overlong_penalty` at the cap (0 buffer: off). Plus `-algo.length_penalty * length / cap` and
    `-algo.budget_penalty` where the thinking budget ran out (0: off).
    lengths, caps: [B] response lengths and the caps they were generated under; forced: [B] 1 where the answer was
    forced.

    >>> length_shaping(torch.tensor([50., 90., 95., 100.]), torch.tensor([100.] * 4), torch.zeros(4),
    ...                AlgoConfig(overlong_buffer=20, overlong_penalty=1.0))
    tensor([ 0.0000, -0.5000, -0.7500, -1.0000])
    >>> length_shaping(torch.tensor([50., 50.]), torch.tensor([100., 100.]), torch.tensor([0., 1.]),
    ...                AlgoConfig(length_penalty=0.1, budget_penalty=0.5))
    tensor([-0.0500, -0.5500])
    """
    shaped = torch.zeros_like(lengths)
    if a.length_penalty:
        shaped = shaped - a.length_penalty * lengths / caps
    if a.overlong_buffer > 0:
        over = (lengths - (caps - a.overlong_buffer)).clamp(min=0) / a.overlong_buffer
        shaped = shaped - a.overlong_penalty * over.clamp(max=1.0)
    if a.budget_penalty:
        shaped = shaped - a.budget_penalty * forced
    return shaped
