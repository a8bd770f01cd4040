"""Weight transports: how the learner's weights reach the rollout engines, chosen from where the actors landed.

| kind | when | how |
| --- | --- | --- |
| `shm` | every engine on learner rank 0's node | a checksummed file in shared memory (`transport/shm.py`) |
| `network` | an engine on another node | TCP from learner rank 0, checksummed (`transport/network.py`) |
| `nccl` | GPUs on both sides | a broadcast into the engines' GPU memory (`transport/nccl.py`) |

`rollout.weight_sync: auto` picks NCCL when both sides have GPUs (and ZeRO < 3), else shm or network by placement;
naming a kind forces it, and `choose` refuses one that cannot work (shm across nodes). Each kind is a sender/receiver
pair behind `transport.base`'s Protocols, and nothing outside this package branches on the kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ponder.transport.base import WeightReceiver, WeightsIntegrityError, WeightSender, node_address, this_node

__all__ = ["TransportError", "TransportSpec", "WeightReceiver", "WeightSender", "WeightsIntegrityError", "choose",
           "engine_options", "node_address", "open_receiver", "open_sender", "preselect", "reads_state", "this_node"]


class TransportError(ValueError):
    """A transport that cannot work where the actors landed: says what to set."""


@dataclass(frozen=True)
class TransportSpec:
    """What learner rank 0 needs to open its sender: the kind, and the kind's own settings."""

    kind: str
    shm_dir: str = ""  # shm: the directory published versions go under
    rollouts: Sequence[Any] = ()  # nccl: the rollout actors to broadcast to
    tp_size: int = 1  # nccl: tensor-parallel workers per engine


def preselect(requested: str, gpus_both_sides: bool, zero_stage: int) -> str:
    """The kind as far as the config alone decides it (the engines must know about NCCL when they start): NCCL, a
    forced kind, or `auto` to be settled by placement.

    >>> preselect("auto", True, 2), preselect("auto", True, 3), preselect("shm", True, 2)
    ('nccl', 'auto', 'shm')
    """
    return "nccl" if requested == "auto" and gpus_both_sides and zero_stage < 3 else requested


def choose(requested: str, learner_node: str, engine_nodes: Sequence[str]) -> str:
    """The transport for engines on `engine_nodes` and learner rank 0 on `learner_node` (Ray node ids).

    >>> choose("auto", "a", ["a", "a"]), choose("auto", "a", ["a", "b"]), choose("network", "a", ["a"])
    ('shm', 'network', 'network')
    >>> choose("shm", "a", ["a", "b"])
    Traceback (most recent call last):
    ...
    ponder.transport.TransportError: rollout.weight_sync=shm needs every rollout engine on learner rank 0's node, \
but engine 1 is on node b and learner rank 0 on node a: set rollout.weight_sync=auto or network
    """
    elsewhere = [i for i, node in enumerate(engine_nodes) if node != learner_node]
    if requested == "shm" and elsewhere:
        raise TransportError(
            f"rollout.weight_sync=shm needs every rollout engine on learner rank 0's node, but engine "
            f"{', '.join(map(str, elsewhere))} is on node {engine_nodes[elsewhere[0]]} and learner rank 0 on node "
            f"{learner_node}: set rollout.weight_sync=auto or network")
    if requested == "auto":
        return "network" if elsewhere else "shm"
    return requested


def engine_options(kind: str) -> dict[str, Any]:
    """What a vLLM engine must be built with to receive `kind` (NCCL: its weight-transfer engine)."""
    if kind != "nccl":
        return {}
    from vllm.config import WeightTransferConfig

    return {"weight_transfer_config": WeightTransferConfig(backend="nccl")}


def reads_state(kind: str) -> bool:
    """Whether publishing gathers the full state dict (every learner rank must join that gather under ZeRO-3)."""
    return kind != "nccl"


def open_sender(spec: TransportSpec, module: Any = None) -> WeightSender:
    """Learner rank 0's sender for `spec.kind`; `module` is the model NCCL broadcasts from."""
    if spec.kind == "shm":
        from ponder.transport.shm import ShmSender

        return ShmSender(spec.shm_dir)
    if spec.kind == "network":
        from ponder.transport.network import NetworkSender

        return NetworkSender()
    if spec.kind == "nccl":
        from ponder.transport.nccl import NcclSender

        address, port = node_address()  # the group meets on learner rank 0's node, at a port free there
        return NcclSender(module, list(spec.rollouts), spec.tp_size, rank=0, master_address=address, master_port=port)
    raise ValueError(f"unknown weight transport {spec.kind!r}")


def open_receiver(kind: str) -> WeightReceiver:
    """An engine's receiver for handles of `kind`."""
    if kind == "shm":
        from ponder.transport.shm import ShmReceiver

        return ShmReceiver()
    if kind == "network":
        from ponder.transport.network import NetworkReceiver

        return NetworkReceiver()
    if kind == "nccl":
        from ponder.transport.nccl import NcclReceiver

        return NcclReceiver()
    raise ValueError(f"unknown weight transport {kind!r}")
