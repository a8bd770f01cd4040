"""Policy-gradient maths: token logprobs, the clipped surrogates (token-level PPO/GRPO and GSPO's sequence-level),
the behaviour-policy corrections, KL estimators, entropy. Pure and shape-documented.

Aggregation: every loss is a masked *sum* divided by a normaliser the caller passes in (the number of response tokens
in the whole mini-batch; for GSPO the number of sequences), so gradient accumulation over micro-batches gives exactly
the gradient of one big batch. Sequence-level terms go through `seq_ids` ([B, T] long: which sequence of the
micro-batch each target belongs to), so a row may hold one sequence or several packed ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits: [B, T, V] predicting targets: [B, T] -> log p(target) [B, T]."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), -1, targets.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """logits: [B, T, V] -> entropy of each next-token distribution [B, T]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                      clip_low: float, clip_high: float, normaliser: float, weights: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO/GRPO clipped objective with separate low/high clip (DAPO's clip-higher), as a loss to minimise.

    logp, old_logp, mask: [B, T]; advantages: [B] (one per sequence, broadcast over its tokens) or [B, T] (per token,
    with dense process terms); weights: optional
    [B, T] per-token importance weights (from `behaviour_correction`), applied outside the clip.
    Returns (sum over tokens of w·max(-A·r, -A·clip(r, 1-low, 1+high)) / normaliser, metrics), r = exp(logp-old_logp).

    >>> loss, _ = clipped_surrogate(torch.log(torch.tensor([[1.5, 0.5]])), torch.zeros(1, 2), torch.tensor([1.0]),
    ...                             torch.ones(1, 2), 0.2, 0.28, normaliser=2.0)
    >>> round(float(loss), 4)  # tokens clipped to 1.28 and kept at 0.5: -(1.28 + 0.5) / 2
    -0.89
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    if weights is not None:
        per_token = per_token * weights
    loss = masked_sum(per_token, mask) / normaliser
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        metrics = {"clip_frac": float(masked_sum((clipped > unclipped).float(), mask) / n),
                   "ratio_mean": float(masked_sum(ratio, mask) / n)}
    return loss, metrics


def sequence_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                       seq_ids: torch.Tensor, clip_low: float, clip_high: float, normaliser: float,
                       weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO: one importance ratio per sequence, the geometric mean s = exp(mean over its masked tokens of
    log π/π_old), clipped to [1 - low, 1 + high] per sequence; each sequence contributes the token mean of
    max(-A·s, -A·clip(s)), and the sum over sequences is divided by `normaliser` (sequences in the mini-batch).

    Written in GSPO-token form, s_t = sg(s)·π(y_t)/sg(π(y_t)): its value is s, and its gradient is the sequence-level
    one (s·mean_t ∇log π(y_t)) while allowing per-token advantages (dense process terms) and weights.
    logp, old_logp, mask, seq_ids: [B, T] (seq_ids: the sequence of each target, < 0 outside any); advantages: [B]
    or [B, T]; weights: optional [B, T], outside the clip. Returns (loss, metrics); clip_frac, ratio_mean per sequence.

    Two tokens of one sequence, each with ratio 1.5: s = 1.5, clipped to 1 + 0.28:

    >>> loss, m = sequence_surrogate(torch.log(torch.tensor([[1.5, 1.5]])), torch.zeros(1, 2), torch.tensor([1.0]),
    ...                              torch.ones(1, 2), torch.zeros(1, 2, dtype=torch.long), 0.2, 0.28, normaliser=1.0)
    >>> round(float(loss), 4), m["clip_frac"]
    (-1.28, 1.0)
    """
    seq_log_ratio, tokens, ids = sequence_means((logp - old_logp).detach(), mask, seq_ids)
    ratio = torch.exp(seq_log_ratio[ids] + logp - logp.detach())
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped) / tokens.clamp(min=1)[ids]
    if weights is not None:
        per_token = per_token * weights
    loss = masked_sum(per_token, mask) / normaliser
    with torch.no_grad():
        present = tokens > 0
        seq_ratio = torch.exp(seq_log_ratio)[present]
        # clipped: its ratio left the band on the side its advantage pushes it (no gradient from it)
        clipped_seq = segment_sum((clipped > unclipped).float(), mask, ids, len(tokens))[present] > 0
        metrics = {"clip_frac": float(clipped_seq.float().mean()) if len(seq_ratio) else 0.0,
                   "ratio_mean": float(seq_ratio.mean()) if len(seq_ratio) else 1.0}
    return loss, metrics


def segment_sum(values: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Per sequence: the sum of values * mask over its targets. values, mask, ids: [B, T] (ids in 0..n-1) -> [n].

    >>> segment_sum(torch.tensor([[1., 2., 3.]]), torch.tensor([[1., 1., 0.]]), torch.tensor([[0, 1, 1]]), 2)
    tensor([1., 2.])
    """
    masked = torch.where(mask != 0, values * mask, torch.zeros_like(values))
    return torch.zeros(n, dtype=masked.dtype, device=masked.device).index_add_(0, ids.reshape(-1), masked.reshape(-1))


def sequence_means(values: torch.Tensor, mask: torch.Tensor, seq_ids: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sequence, the mean of values over its masked targets [n] and their count [n]; and seq_ids [B, T] made
    indices into those (a target outside any sequence, < 0, is off the mask and reads sequence 0).

    >>> sequence_means(torch.tensor([[1., 3., 5.]]), torch.ones(1, 3), torch.tensor([[0, 0, 1]]))[:2]
    (tensor([2., 5.]), tensor([2., 1.]))
    """
    ids = seq_ids.clamp(min=0)
    n = int(ids.max()) + 1 if ids.numel() else 1
    tokens = segment_sum(torch.ones_like(values), mask, ids, n)
    return segment_sum(values, mask, ids, n) / tokens.clamp(min=1), tokens, ids


def behaviour_correction(prox_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor, mode: str,
                         cap: float, seq_ids: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Per-token weights for samples drawn by a behaviour policy μ (the engine's weights, possibly versions old; vLLM
    recorded log μ per token) while the clipped ratio is taken against the proximal policy π_prox (the learner's
    weights at the start of this step). w = π_prox / μ:
      none       w = 1: the gap is ignored (exact only when the engine serves the learner's current weights)
      tis        w = min(π_prox/μ, cap): truncated importance sampling (bounded variance, small bias)
      decoupled  w = π_prox/μ, and tokens with w > cap leave the loss: decoupled PPO with AReaL's cap
      token_mask w = 1, and tokens whose π_prox/μ leaves [1/cap, cap] leave the loss (masked importance sampling)
      seq_mask   w = 1, and sequences whose geometric-mean ratio exp(mean log π_prox/μ) leaves [1/cap, cap] leave
                 the loss whole (sequence-level rejection; `seq_ids` [B, T] says which sequence a target is in,
                 default: one per row)

    prox_logp, behaviour_logp, mask: [B, T]. Returns (weights [B, T], mask [B, T], metrics), weights detached.
    Metrics: the raw ratio's mean and max, the fraction of tokens above the cap, the fraction of tokens the
    correction took out of the loss, and the k3 estimate of KL(μ || π_prox).

    >>> w, keep, m = behaviour_correction(torch.log(torch.tensor([[0.5, 0.9]])), torch.log(torch.tensor([[0.1, 0.9]])),
    ...                                   torch.ones(1, 2), "tis", cap=2.0)
    >>> w.tolist(), keep.tolist(), m["is_capped_frac"]
    ([[2.0, 1.0]], [[1.0, 1.0]], 0.5)
    """
    with torch.no_grad():
        raw = torch.exp(prox_logp - behaviour_logp)
        capped = torch.where(mask != 0, (raw > cap).float(), 0.0)
        if mode == "none":
            weights, keep = torch.ones_like(raw), mask
        elif mode == "tis":
            weights, keep = raw.clamp(max=cap), mask
        elif mode == "decoupled":
            weights, keep = raw, mask * (raw <= cap).float()
        elif mode == "token_mask":
            weights, keep = torch.ones_like(raw), mask * ((raw >= 1.0 / cap) & (raw <= cap)).float()
        elif mode == "seq_mask":
            rows = torch.arange(len(raw)).unsqueeze(-1).expand_as(raw)
            mean_log, _, ids = sequence_means(prox_logp - behaviour_logp, mask, seq_ids if seq_ids is not None else rows)
            geo = torch.exp(mean_log)
            weights, keep = torch.ones_like(raw), mask * ((geo >= 1.0 / cap) & (geo <= cap)).float()[ids]
        else:
            raise ValueError(f"unknown off-policy correction {mode!r}; use none, tis, decoupled, token_mask or "
                             "seq_mask")
        n = mask.sum().clamp(min=1)
        metrics = {"is_weight_mean": float(masked_sum(raw, mask) / n),
                   "is_weight_max": float(raw[mask != 0].max()) if mask.any() else 1.0,
                   "is_capped_frac": float(capped.sum() / n),
                   "is_rejected_frac": float(((mask != 0) & (keep == 0)).sum() / n),
                   "behaviour_kl": float(masked_sum(kl_penalty(behaviour_logp, prox_logp, "k3"), mask) / n)}
    return weights, keep, metrics


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from samples of the policy (Schulman's k1/k2/k3). [B, T].

    k1 = log r, k2 = (log r)^2 / 2, k3 = (1/r - 1) + log r, with log r = logp - ref_logp; k3 is unbiased and >= 0.
    """
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.exp(-log_ratio) - 1.0 + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; use k1, k2 or k3")


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float,
               normaliser: float) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped value loss: 0.5·max((V − R)², (V_old + clip(V − V_old, −clip, clip) − R)²), summed over the
    mask's targets / normaliser (the mini-batch's trained tokens). values, old_values, returns, mask: [B, T].
    Returns (loss, metrics: the fraction of tokens where the clipped term was the larger).

    >>> loss, m = value_loss(torch.tensor([[2.0, 0.5]]), torch.tensor([[0.0, 0.5]]), torch.tensor([[1.0, 1.0]]),
    ...                      torch.ones(1, 2), clip=0.2, normaliser=2.0)
    >>> round(float(loss), 4), m["value_clip_frac"]  # token 1: max(1, 0.8²) = 1; token 2: 0.25 -> 0.5·1.25 / 2
    (0.3125, 0.0)
    """
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    plain_sq, clipped_sq = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_sum(torch.maximum(plain_sq, clipped_sq), mask) / normaliser
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        metrics = {"value_clip_frac": float(masked_sum((clipped_sq > plain_sq).float(), mask) / n)}
    return loss, metrics


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of values * mask where the mask is not 0. Exact: whatever sits outside the mask (inf, NaN: an environment
    token's placeholder behaviour logprob) adds nothing, to the sum or to its gradient.

    >>> masked_sum(torch.tensor([1.0, float("inf"), 3.0]), torch.tensor([1.0, 0.0, 0.5]))
    tensor(2.5000)
    """
    return torch.where(mask != 0, values * mask, torch.zeros_like(values)).sum()


def policy_loss(logp: torch.Tensor, prox_logp: torch.Tensor, behaviour_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, seq_ids: torch.Tensor, algo, tokens: float, sequences: float
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """The policy loss of one micro-batch: the clipped surrogate against the proximal policy (token-level, or GSPO's
    sequence-level with algo.seq_clip_*), reweighted or masked for the engine's behaviour policy
    (`behaviour_correction`), on the tokens of `mask` only (the policy's own response tokens; an environment's tokens
    are context). `algo`: the AlgoConfig; `tokens`, `sequences`: the mini-batch's trained tokens and sequences (the
    normalisers). Exact: what sits outside the mask (an environment token's placeholder behaviour logprob, its
    advantage) reaches neither the loss nor its gradient."""
    outside = mask == 0
    behaviour_logp = torch.where(outside, prox_logp, behaviour_logp)
    if advantages.dim() == 2:
        advantages = torch.where(outside, 0.0, advantages)
    weights, keep, stats = behaviour_correction(prox_logp, behaviour_logp, mask, algo.off_policy, algo.is_cap,
                                                seq_ids)
    if algo.name == "gspo":
        loss, surrogate_stats = sequence_surrogate(logp, prox_logp, advantages, keep, seq_ids, algo.seq_clip_low,
                                                   algo.seq_clip_high, sequences, weights)
    else:
        loss, surrogate_stats = clipped_surrogate(logp, prox_logp, advantages, keep, algo.clip_low, algo.clip_high,
                                                  tokens, weights)
    return loss, stats | surrogate_stats
