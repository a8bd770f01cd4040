"""Advantage estimators: group-relative (GRPO, Dr. GRPO), leave-one-out (RLOO), REINFORCE++'s batch-normalised
returns with an optional per-token KL in the reward, GAE over a learned value model (PPO), dense process terms, and
the length-control reward terms. Pure functions of tensors; shapes in the docstrings."""

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
    centered, inverse, counts = _centred_in_group(rewards, group_ids)
    if not norm_by_std:
        return centered
    sq = torch.zeros(len(counts), dtype=rewards.dtype).index_add_(0, inverse, centered**2)
    std = torch.sqrt(sq / (counts - 1).clamp(min=1))
    return centered / (std[inverse] + eps)


def _centred_in_group(rewards: torch.Tensor, group_ids: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each reward minus its group's mean [B], each sample's group index [B], and the groups' sizes [G]."""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=rewards.dtype).index_add_(0, inverse, rewards)
    return rewards - (sums / counts)[inverse], inverse, counts


def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """RLOO: each sample's reward minus the mean reward of the *other* samples of its group, n/(n-1)·(r - mean).
    rewards: [B] float; group_ids: [B] int. Returns [B]; a group of one gets 0.

    >>> rloo_advantages(torch.tensor([1., 0., 0., 1., 5.]), torch.tensor([0, 0, 0, 0, 1]))
    tensor([ 0.6667, -0.6667, -0.6667,  0.6667,  0.0000])
    """
    centered, inverse, counts = _centred_in_group(rewards, group_ids)
    n = counts[inverse].to(rewards.dtype)
    return torch.where(n > 1, centered * n / (n - 1).clamp(min=1), torch.zeros_like(rewards))


def outcome_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, a: AlgoConfig) -> torch.Tensor:
    """The per-sample advantage of `a.name`'s estimator, [B] -> [B]: group-normalised for grpo and gspo (centred
    only with norm_adv_by_std=false), leave-one-out for rloo, the reward itself for reinforce_pp and ppo (turned
    into token advantages later: `kl_returns`/`gae`, then `batch_normalised` over the whole batch's tokens)."""
    if a.name == "rloo":
        return rloo_advantages(rewards, group_ids)
    if a.name in ("reinforce_pp", "ppo"):
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


def gae(outcome: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, seq_ids: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each sequence's trained tokens, in order (tokens off the mask, such as an
    environment's, are skipped): the outcome reward arrives after the last token, δ_t = r_t + γ·V_{t+1} − V_t with
    V after the last token 0, A_t = δ_t + γλ·A_{t+1}; returns R_t = A_t + V_t (the value model's targets).
    outcome: [B, T], each sequence's reward on its tokens (as `pack` lays advantages); values: [B, T], the value of
    the state before each target; mask, seq_ids: [B, T] (packed rows hold several sequences). Returns (advantages,
    returns), [B, T] each, 0 off the mask.

    One sequence of 3 tokens, reward 1, values 0.5, 0.5, 0.5, γ = 1, λ = 0.5: δ = 0, 0, 0.5, so A = 0.125, 0.25, 0.5:

    >>> on = torch.ones(1, 3)
    >>> a, r = gae(on, torch.full((1, 3), 0.5), on, torch.zeros(1, 3, dtype=torch.long), gamma=1.0, lam=0.5)
    >>> a.tolist(), r.tolist()
    ([[0.125, 0.25, 0.5]], [[0.625, 0.75, 1.0]])
    """
    on = mask != 0
    ids = seq_ids[on]
    if not len(ids):
        return torch.zeros_like(values), torch.zeros_like(values)
    # each sequence's trained tokens as one row of a grid, in order (row-major positions ascend within a sequence)
    order = torch.sort(ids, stable=True).indices
    ids = ids[order]
    counts = torch.bincount(ids)
    col = torch.arange(len(ids)) - (torch.cumsum(counts, 0) - counts)[ids]
    rows, width = len(counts), int(counts.max())
    v = torch.zeros(rows, width + 1).index_put_((ids, col), values[on][order].float())  # V = 0 past each end
    last = col == counts[ids] - 1
    r = torch.zeros(rows, width).index_put_((ids[last], col[last]), outcome[on][order].float()[last])
    valid = torch.zeros(rows, width, dtype=torch.bool).index_put_((ids, col), torch.tensor(True))
    adv, running = torch.zeros(rows, width), torch.zeros(rows)
    for t in reversed(range(width)):
        running = torch.where(valid[:, t], r[:, t] + gamma * v[:, t + 1] - v[:, t] + gamma * lam * running, 0.0)
        adv[:, t] = running
    advantages = torch.zeros_like(values, dtype=torch.float32)
    advantages[on] = adv[ids, col][torch.argsort(order)]
    return advantages, torch.where(on, advantages + values.float(), torch.zeros_like(advantages))


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
    mean, std = mean_std(moments)
    return torch.where(mask != 0, (values - mean) / (std + eps), torch.zeros_like(values))


def mean_std(moments: torch.Tensor) -> tuple[float, float]:
    """The mean and population std of what `token_moments` summed: [3] -> (mean, std).

    >>> mean_std(torch.tensor([4.0, 8.0, 20.0]))  # values 1, 1, 3, 3
    (2.0, 1.0)
    """
    count, total, squares = moments.tolist()
    mean = total / max(count, 1.0)
    return mean, max(squares / max(count, 1.0) - mean * mean, 0.0) ** 0.5


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


def sample_rewards(trajectories: list, a: AlgoConfig) -> tuple[torch.Tensor, list[bool]]:
    """Each sample's reward with the length-control terms (`length_shaping`), [B], and whether it is trained on:
    not a masked sample (its reward infrastructure failed), nor with `a.overlong_filter` a truncated one; those get
    reward 0 here and stay out of every statistic. trajectories: [B] `Trajectory`s."""
    keep = [i for i, t in enumerate(trajectories)
            if not t.masked and not (a.overlong_filter and t.finish_reason == "length")]
    rewards = torch.zeros(len(trajectories))
    if keep:
        chosen = [trajectories[i] for i in keep]
        kept = torch.tensor([t.reward for t in chosen], dtype=torch.float32)
        if a.overlong_buffer or a.length_penalty or a.budget_penalty:
            lengths = torch.tensor([len(t.response_ids) for t in chosen], dtype=torch.float32)
            caps = torch.tensor([t.max_tokens or len(t.response_ids) for t in chosen], dtype=torch.float32).clamp(min=1)
            forced = torch.tensor([float(t.forced_answer) for t in chosen])
            kept = kept + length_shaping(lengths, caps, forced, a)
        rewards[keep] = kept
    kept_set = set(keep)
    return rewards, [i in kept_set for i in range(len(trajectories))]


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
