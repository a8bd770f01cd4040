"""Turns trajectories into tensors aligned with next-token logits, and splits mini/micro-batches.

For a sequence x = prompt + response, logits at position i predict x[i+1], so every per-token tensor here has length
L-1 and is indexed by the *target* position. `response_mask` marks the targets that are response tokens.

Two layouts: padded (one sequence a row, right-padded, an attention mask) and packed (the micro-batch's sequences
concatenated into one row with no padding; position ids restart at 0 for each sequence, which is how the model code
keeps attention inside each sequence: a block-diagonal causal mask on CPU, varlen attention with flash-attention on
GPU). `seq_ids` says which sequence each target belongs to in either layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ponder.types import Trajectory


Values = dict[tuple[int, int], torch.Tensor]  # PPO: (group_id, sample_index) -> the value of each response position


def sample_key(t: Trajectory) -> tuple[int, int]:
    """A sample's key within a step, as `Values` are keyed."""
    return t.group_id, t.sample_index


@dataclass
class Packed:
    input_ids: torch.Tensor  # [B, L] long, right-padded (packed: B = 1, no padding)
    attention_mask: torch.Tensor | None  # [B, L] long; None when packed (the position ids delimit the sequences)
    targets: torch.Tensor  # [B, L-1] long: input_ids shifted left
    response_mask: torch.Tensor  # [B, L-1] float: 1 on response-token targets the policy sampled, of unmasked samples
    behaviour_logprobs: torch.Tensor  # [B, L-1] float: the engine's logprobs, 0 outside the response
    advantages: torch.Tensor  # [B, L-1] float: the sequence's advantage (+ dense process terms) on its response
    replay_mask: torch.Tensor | None = None  # [B, L-1] float: response_mask of the samples replayed as demonstrations
    seq_ids: torch.Tensor | None = None  # [B, L-1] long: the target's sequence (its index in the batch), -1 on padding
    position_ids: torch.Tensor | None = None  # [B, L] long when packed: each sequence's own positions from 0
    prox_logprobs: torch.Tensor | None = None  # [B, L-1]: the proximal policy's, set by the learner before updating
    ref_logprobs: torch.Tensor | None = None  # [B, L-1]: the KL reference model's, set by the learner
    values: torch.Tensor | None = None  # [B, L-1] float (PPO): the value model's value of the state before a target
    returns: torch.Tensor | None = None  # [B, L-1] float (PPO): the value model's targets, set by the value model
    spans: tuple[tuple[int, int, int], ...] = ()  # per sequence: (row, first, end) of its response targets

    def response(self, values: torch.Tensor, i: int) -> torch.Tensor:
        """Sequence i's response-target slice of a [B, L-1] tensor."""
        row, first, end = self.spans[i]
        return values[row, first:end]

    @property
    def num_trained_sequences(self) -> int:
        """Sequences with at least one trained target."""
        return len(torch.unique(self.seq_ids[self.response_mask != 0]))

    def model_inputs(self, device) -> dict[str, torch.Tensor]:
        """Keyword arguments of the model's forward for this layout (no KV cache: the model code recognises packed
        rows by their position ids only without one)."""
        if self.position_ids is not None:
            return {"input_ids": self.input_ids.to(device), "position_ids": self.position_ids.to(device),
                    "use_cache": False}
        return {"input_ids": self.input_ids.to(device), "attention_mask": self.attention_mask.to(device),
                "use_cache": False}


def pack(trajectories: list[Trajectory], advantages: torch.Tensor, pad_id: int,
         dense: list[torch.Tensor] | None = None, trained: list[bool] | None = None,
         replay: list[bool] | None = None, packed: bool = False, values: list[torch.Tensor] | None = None) -> Packed:
    """advantages: [B] aligned with `trajectories`; dense: optional per-sample [response length] additions; trained:
    optional [B], False for samples that leave the policy loss (default: all but reward-masked ones); replay: optional
    [B], True for samples trained on as demonstrations (`replay_mask`: their policy tokens, whether or not trained);
    packed: one row holding every sequence back to back instead of a padded row each; values: optional per-sample
    [response length] value-model values (PPO)."""
    lengths = [len(t.prompt_ids) + len(t.response_ids) for t in trajectories]
    rows, width = (1, sum(lengths)) if packed else (len(trajectories), max(lengths))
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attention = torch.zeros((rows, width), dtype=torch.long)
    positions = torch.zeros((rows, width), dtype=torch.long)
    mask, behaviour, token_adv = (torch.zeros((rows, width - 1)) for _ in range(3))
    seq_ids = torch.full((rows, width - 1), -1, dtype=torch.long)
    replay_mask = torch.zeros((rows, width - 1)) if replay is not None else None
    token_values = torch.zeros((rows, width - 1)) if values is not None else None
    spans = []
    start = 0
    for i, traj in enumerate(trajectories):
        row, at = (0, start) if packed else (i, 0)
        p, r = len(traj.prompt_ids), len(traj.response_ids)
        ids[row, at : at + p + r] = torch.tensor(traj.prompt_ids + traj.response_ids)
        attention[row, at : at + p + r] = 1
        positions[row, at : at + p + r] = torch.arange(p + r)
        seq_ids[row, at : at + p + r - 1] = i  # its last token predicts the next sequence's first: no target of its
        response = slice(at + p - 1, at + p + r - 1)
        spans.append((row, at + p - 1, at + p + r - 1))
        # environment tokens (budget forcing's forced text) are context, never trained on
        policy = torch.tensor(traj.sampled_mask, dtype=torch.float32) if traj.sampled_mask else 1.0
        if (not traj.masked) if trained is None else trained[i]:  # a sample whose reward failed trains on nothing
            mask[row, response] = policy
        if replay is not None and replay[i]:
            replay_mask[row, response] = policy
        behaviour[row, response] = torch.tensor(traj.logprobs, dtype=torch.float32)
        token_adv[row, response] = advantages[i] + (dense[i] if dense is not None else 0.0)
        if values is not None:
            token_values[row, response] = values[i]
        start += p + r
    return Packed(ids, None if packed else attention, ids[:, 1:], mask, behaviour, token_adv, replay_mask, seq_ids,
                  positions if packed else None, values=token_values, spans=tuple(spans))


def micro_batches(lengths: list[int], size: int, token_budget: int = 0, packed: bool = False) -> list[list[int]]:
    """Positions 0..n-1 of sequences in length order, cut into consecutive micro-batches of at most `size` sequences
    and, with a token budget, at most `token_budget` tokens: rows × the longest length when padded, the sum of the
    lengths when packed. A sequence longer than the budget goes alone.

    >>> micro_batches([2, 3, 3, 8], size=3)
    [[0, 1, 2], [3]]
    >>> micro_batches([2, 3, 3, 8], size=8, token_budget=9), micro_batches([2, 3, 3, 8], 8, 9, packed=True)
    ([[0, 1, 2], [3]], [[0, 1, 2], [3]])
    >>> micro_batches([2, 2, 2, 2, 4], size=8, token_budget=8), micro_batches([2, 2, 2, 2, 4], 8, 8, packed=True)
    ([[0, 1, 2, 3], [4]], [[0, 1, 2, 3], [4]])
    """
    out: list[list[int]] = []
    for i, length in enumerate(lengths):
        if out:
            part = [lengths[j] for j in out[-1]] + [length]
            cost = sum(part) if packed else len(part) * max(part)
            if len(part) <= size and (not token_budget or cost <= token_budget):
                out[-1].append(i)
                continue
        out.append([i])
    return out


def shard_groups(trajectories: list[Trajectory], num_shards: int, shard: int) -> list[Trajectory]:
    """The trajectories of every `num_shards`-th group, starting at `shard`: whole groups per shard."""
    group_order = sorted({t.group_id for t in trajectories})
    mine = set(group_order[shard::num_shards])
    return [t for t in trajectories if t.group_id in mine]
