"""GPU weight sync: the learner broadcasts its weights over NCCL straight into the vLLM engines' GPU memory.

Both halves use vLLM's weight-transfer engines (`vllm.distributed.weight_transfer`). The learner's rank 0 opens an
NCCL group with every inference worker (rank 0 = learner, then each engine's tensor-parallel workers), and each push
broadcasts the parameters in checkpoint format; vLLM loads them with its layer-wise reload path. The engines are
driven through `RolloutFanoutClient`, vLLM's four-method weight-sync client protocol implemented over Ray handles to
our rollout actors, so the control plane goes through Ray and the bytes through NCCL.

Integrity: NCCL carries no checksum; the version is stamped on the engines at `finish_weight_update`, and the
receiver's `fetch` returns None (the weights are already in the engine), after which the rollout actor checks that
the engine serves the handle's version (the CPU paths' checksum has no equivalent here yet). ZeRO-3 is not supported
on this path (parameters are partitioned; the config refuses the combination).

This module needs CUDA, vLLM's CUDA build and NCCL; it is exercised by tests marked `gpu` and cannot run on the CPU
machines the rest of the suite runs on.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from ponder.types import WeightsVersion


class RolloutFanoutClient:
    """vLLM's `VLLMWeightSyncClient` protocol over a pool of rollout actors (each one vLLM engine).

    Each engine's workers occupy NCCL ranks `1 + i * tp_size ...`; the trainer engine proposes `rank_offset=1`, which
    is rewritten per engine here.
    """

    def __init__(self, rollouts: list, tp_size: int):
        self.rollouts, self.tp_size = rollouts, tp_size
        self.pending_version: str | None = None  # stamped on the engines when the trainer engine finishes a push

    def _all(self, calls: list) -> None:
        import ray

        ray.get(calls)

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self._all([w.init_weight_transfer.remote({**init_info, "rank_offset": 1 + i * self.tp_size})
                   for i, w in enumerate(self.rollouts)])

    def start_weight_update(self) -> None:
        self._all([w.start_weight_update.remote() for w in self.rollouts])

    def update_weights(self, update_info: Any) -> None:
        self._all([w.update_weights.remote(update_info) for w in self.rollouts])

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        version = weight_version or self.pending_version
        self._all([w.finish_weight_update.remote(version) for w in self.rollouts])


class NcclSender:
    """Learner side (rank 0 sends; other ranks only join the trainer-side collectives). Reads the module itself."""

    def __init__(self, module, rollouts: list, tp_size: int, rank: int, master_address: str, master_port: int):
        from vllm.distributed.weight_transfer.base import ModuleSource
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

        self.client = RolloutFanoutClient(rollouts, tp_size)
        info = NCCLTrainerInitInfo(master_address=master_address, master_port=master_port,
                                   world_size=1 + len(rollouts) * tp_size, rank=rank)
        self.engine = NCCLTrainerWeightTransferEngine.trainer_init(info, client=self.client,
                                                                    source=ModuleSource(module))
        self.version = 0

    def publish(self, version: int, state: Optional[Mapping[str, Any]] = None) -> WeightsVersion:
        self.client.pending_version = str(version)
        self.engine.send_weights()  # start → update_weights concurrently with the broadcast → finish (stamps version)
        self.version = version
        return WeightsVersion(version, "nccl", None, "", 0, {}, fetchable=False)

    def rebind(self, module) -> None:
        """Broadcast from `module` from now on (the learner rebuilt its model: STaR's restart)."""
        from vllm.distributed.weight_transfer.base import ModuleSource

        self.engine.source = ModuleSource(module)

    def close(self) -> None:
        self.engine.shutdown()


class NcclReceiver:
    """Engine side: the bytes arrived during the learner's broadcast; there is nothing to fetch."""

    def fetch(self, handle: WeightsVersion) -> None:
        return None

    def close(self) -> None:
        pass
