"""Turns trajectories into padded tensors aligned with next-token logits, and splits mini/micro-batches.

For a sequence x = prompt + response, logits at position i predict x[i+1], so every per-token tensor here has length
L-1 and is indexed by the *target* position. `response_mask` marks the targets that are response tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ponder.types import Trajectory


@dataclass
class Packed:
    input_ids: torch.Tensor  # [B, L] long, right-padded
    attention_mask: torch.Tensor  # [B, L] long
    targets: torch.Tensor  # [B, L-1] long: input_ids shifted left
    response_mask: torch.Tensor  # [B, L-1] float: 1 on response-token targets the policy sampled, of unmasked samples
    behaviour_logprobs: torch.Tensor  # [B, L-1] float: the engine's logprobs, 0 outside the response
    advantages: torch.Tensor  # [B, L-1] float: the sequence's advantage (+ dense process terms) on its response
    replay_mask: torch.Tensor | None = None  # [B, L-1] float: response_mask of the samples replayed as demonstrations


def pack(trajectories: list[Trajectory], advantages: torch.Tensor, pad_id: int,
         dense: list[torch.Tensor] | None = None, trained: list[bool] | None = None,
         replay: list[bool] | None = None) -> Packed:
    """advantages: [B] aligned with `trajectories`; dense: optional per-sample [response length] additions; trained:
    optional [B], False for samples that leave the policy loss (default: all but reward-masked ones); replay: optional
    [B], True for samples trained on as demonstrations (`replay_mask`: their policy tokens, whether or not trained)."""
    lengths = [len(t.prompt_ids) + len(t.response_ids) for t in trajectories]
    width = max(lengths)
    ids = torch.full((len(trajectories), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(trajectories), width), dtype=torch.long)
    mask = torch.zeros((len(trajectories), width - 1))
    behaviour = torch.zeros((len(trajectories), width - 1))
    token_adv = torch.zeros((len(trajectories), width - 1))
    replay_mask = torch.zeros((len(trajectories), width - 1)) if replay is not None else None
    for row, traj in enumerate(trajectories):
        p, r = len(traj.prompt_ids), len(traj.response_ids)
        ids[row, : p + r] = torch.tensor(traj.prompt_ids + traj.response_ids)
        attention[row, : p + r] = 1
        # environment tokens (budget forcing's forced text) are context, never trained on
        policy = torch.tensor(traj.sampled_mask, dtype=torch.float32) if traj.sampled_mask else 1.0
        if (not traj.masked) if trained is None else trained[row]:  # a sample whose reward failed trains on nothing
            mask[row, p - 1 : p + r - 1] = policy
        if replay is not None and replay[row]:
            replay_mask[row, p - 1 : p + r - 1] = policy
        behaviour[row, p - 1 : p + r - 1] = torch.tensor(traj.logprobs, dtype=torch.float32)
        token_adv[row, p - 1 : p + r - 1] = advantages[row] + (dense[row] if dense is not None else 0.0)
    return Packed(ids, attention, ids[:, 1:], mask, behaviour, token_adv, replay_mask)


def chunks(items: list, size: int) -> list[list]:
    """Consecutive slices of at most `size`.

    >>> chunks([1, 2, 3, 4, 5], 2)
    [[1, 2], [3, 4], [5]]
    """
    return [items[i : i + size] for i in range(0, len(items), size)]


def shard_groups(trajectories: list[Trajectory], num_shards: int, shard: int) -> list[Trajectory]:
    """The trajectories of every `num_shards`-th group, starting at `shard`: whole groups per shard."""
    group_order = sorted({t.group_id for t in trajectories})
    mine = set(group_order[shard::num_shards])
    return [t for t in trajectories if t.group_id in mine]
