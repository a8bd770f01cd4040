"""Policy-gradient maths: token logprobs, the clipped surrogate, KL estimators, entropy. Pure and shape-documented.

Aggregation is token-level: every loss is a masked *sum* divided by a normaliser the caller passes in (the number of
response tokens in the whole mini-batch), so gradient accumulation over micro-batches gives exactly the gradient of
one big batch.
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


def behaviour_correction(prox_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor, mode: str,
                         cap: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Per-token weights for samples drawn by a behaviour policy μ (the engine's weights, possibly versions old; vLLM
    recorded log μ per token) while the clipped ratio is taken against the proximal policy π_prox (the learner's
    weights at the start of this step). w = π_prox / μ:
      none       w = 1: the gap is ignored (exact only when the engine serves the learner's current weights)
      tis        w = min(π_prox/μ, cap): truncated importance sampling (bounded variance, small bias)
      decoupled  w = π_prox/μ, and tokens with w > cap leave the loss: decoupled PPO with AReaL's cap

    prox_logp, behaviour_logp, mask: [B, T]. Returns (weights [B, T], mask [B, T], metrics), weights detached.

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
        else:
            raise ValueError(f"unknown off-policy correction {mode!r}; use none, tis or decoupled")
        n = mask.sum().clamp(min=1)
        metrics = {"is_weight_mean": float(masked_sum(raw, mask) / n),
                   "is_weight_max": float(raw[mask != 0].max()) if mask.any() else 1.0,
                   "is_capped_frac": float(capped.sum() / n),
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


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of values * mask where the mask is not 0. Exact: whatever sits outside the mask (inf, NaN: an environment
    token's placeholder behaviour logprob) adds nothing, to the sum or to its gradient.

    >>> masked_sum(torch.tensor([1.0, float("inf"), 3.0]), torch.tensor([1.0, 0.0, 0.5]))
    tensor(2.5000)
    """
    return torch.where(mask != 0, values * mask, torch.zeros_like(values)).sum()


def policy_loss(logp: torch.Tensor, prox_logp: torch.Tensor, behaviour_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, algo, normaliser: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO policy loss of one micro-batch: the clipped surrogate against the proximal policy, reweighted for the
    engine's behaviour policy (`behaviour_correction`), on the tokens of `mask` only (the policy's own response
    tokens; an environment's tokens are context). `algo`: the AlgoConfig. Exact: what sits outside the mask (an
    environment token's placeholder behaviour logprob, its advantage) reaches neither the loss nor its gradient."""
    outside = mask == 0
    behaviour_logp = torch.where(outside, prox_logp, behaviour_logp)
    if advantages.dim() == 2:
        advantages = torch.where(outside, 0.0, advantages)
    weights, keep, stats = behaviour_correction(prox_logp, behaviour_logp, mask, algo.off_policy, algo.is_cap)
    loss, surrogate_stats = clipped_surrogate(logp, prox_logp, advantages, keep, algo.clip_low, algo.clip_high,
                                              normaliser, weights)
    return loss, stats | surrogate_stats
