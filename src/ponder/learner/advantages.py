"""Group-relative advantages (GRPO). Pure functions of tensors; shapes in the docstrings."""

from __future__ import annotations

import torch


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
