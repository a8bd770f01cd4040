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
                      clip_low: float, clip_high: float, normaliser: float) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO/GRPO clipped objective with separate low/high clip (DAPO's clip-higher), as a loss to minimise.

    logp, old_logp, mask: [B, T]; advantages: [B] (one per sequence, broadcast over its tokens).
    Returns (sum over tokens of max(-A·r, -A·clip(r, 1-low, 1+high)) / normaliser, metrics).
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(-1)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    loss = (per_token * mask).sum() / normaliser
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        metrics = {"clip_frac": float(((clipped > unclipped).float() * mask).sum() / n),
                   "ratio_mean": float((ratio * mask).sum() / n)}
    return loss, metrics


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
    return (values * mask).sum()
