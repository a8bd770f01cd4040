"""One data-parallel rank of a DeepSpeed engine, the part the policy learner and the PPO value model share: the
rank's process group (met at rank 0's node address, on any nodes), the engine over a Hugging Face model with its
optimizer and ZeRO stage, micro-batching by count and token budget, full-weight gathers, and checkpoints uploaded by
every rank from its own node. Subclasses say which model (`_load_model`) and what a training step is."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ponder.learner.batching import micro_batches
from ponder.platform.config import LearnerConfig, parse_cores
from ponder.seeding import rng_state, set_rng_state
from ponder.storage.checkpoints import CheckpointError, CheckpointTarget
from ponder.transport import node_address, this_node
from ponder.types import Trajectory

CALLER_STATE = "driver.json"  # inside a checkpoint: the caller's state, opaque here (the driver's loop position)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DeepSpeedRank:
    def __init__(self, model_path: str, dtype: str, cfg: LearnerConfig, *, rank: int, samples_per_step: int,
                 seed: int):
        """Cheap: the group forms in `setup`, once rank 0 has said where it meets (`rendezvous_address`)."""
        self.model_path, self.dtype, self.samples_per_step, self.seed = model_path, dtype, samples_per_step, seed
        self.cfg, self.rank = cfg, rank
        self.scratch: Path | None = None  # checkpoint staging on this rank's node, once set up

    def _load_model(self) -> torch.nn.Module:
        """The model the engine trains, freshly loaded."""
        raise NotImplementedError

    def rendezvous_address(self) -> tuple[str, int]:
        """Rank 0: this node's address and a port free on it, where the group's ranks meet (on any node)."""
        return node_address()

    def node_id(self) -> str:
        """The Ray node this rank landed on."""
        return this_node()

    def setup(self, master_addr: str, master_port: int) -> None:
        """Collective: join the group at rank 0's address, then build the DeepSpeed engine."""
        cfg, rank = self.cfg, self.rank
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(cfg.num_ranks), LOCAL_RANK="0")
        if cfg.cpu_bind is not None:  # keep off the cores given to the engines (they overlap in streaming modes)
            os.sched_setaffinity(0, parse_cores(cfg.cpu_bind))
        torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(self.seed + rank)
        import deepspeed
        from transformers import AutoTokenizer

        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.samples_per_minibatch = self.samples_per_step // cfg.num_ranks // cfg.num_minibatches
        self.grad_accum = math.ceil(self.samples_per_minibatch / cfg.micro_batch_size)
        self._build_engine()
        # checkpoint staging on this rank's node (the master port names the group)
        self.scratch = Path(tempfile.gettempdir()) / f"ponder-learner-{master_port}"

    def _build_engine(self) -> None:
        """The DeepSpeed engine over the initial model (`_load_model`), with a fresh optimizer."""
        import deepspeed

        cfg = self.cfg
        model = self._load_model()
        if cfg.gradient_checkpointing:  # acts in training mode only; the model's dropout stays as configured (0)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
            model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                      weight_decay=cfg.weight_decay)
        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
            "gradient_accumulation_steps": self.grad_accum,
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": self.dtype == "bfloat16"},
            "fp16": {"enabled": self.dtype == "float16"},
            "steps_per_print": 1 << 30,
        }
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)

    def _micro(self, trajectories: list[Trajectory]) -> list[list[int]]:
        """Indices of `trajectories` in micro-batches by sequence count and token budget, taken in length order so
        that similar lengths share one (long-tailed responses padded to a short one's length cost little; the loss is
        a token sum over the mini-batch, so how samples are split does not change the gradient)."""
        lengths = [len(t.prompt_ids) + len(t.response_ids) for t in trajectories]
        order = sorted(range(len(trajectories)), key=lengths.__getitem__)
        parts = micro_batches([lengths[i] for i in order], self.cfg.micro_batch_size, self.cfg.micro_batch_tokens,
                              self.cfg.packing)
        return [[order[j] for j in part] for part in parts]

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full weights on rank 0 (gathered across ranks under ZeRO-3); None on other ranks. Collective."""
        import deepspeed

        params = list(self.engine.module.parameters())
        enabled = self.cfg.zero_stage == 3
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=enabled):
            if self.rank != 0:
                return None
            return {k: v.detach().to("cpu", copy=True) for k, v in self.engine.module.state_dict().items()}

    # -- checkpoints --------------------------------------------------------------------------------------------------
    def save_checkpoint(self, target: CheckpointTarget, step: int, caller_state: dict, meta: dict,
                        export_hf: bool) -> str | None:
        """Collective. Every rank writes its DeepSpeed state (ZeRO shards of model, optimizer and scheduler) and its
        RNG state into a staging directory on its own node and uploads it from there (no shared disk needed); rank 0
        adds the Hugging Face export and `caller_state` (JSON, returned as it was by `load_checkpoint`), and writes the
        manifest, with `meta`, once every rank's files are up. Returns the checkpoint's URI on rank 0, None elsewhere."""
        import torch.distributed as dist

        store, staging = target.store(), self.scratch / f"save-{step:08d}-rank{self.rank}"
        try:
            self.engine.save_checkpoint(str(staging / "deepspeed"), tag="state", save_latest=False)
            (staging / "rng").mkdir(parents=True, exist_ok=True)
            torch.save(rng_state(), staging / "rng" / f"rank_{self.rank}.pt")
            state = self.full_state_dict() if export_hf else None  # collective under ZeRO-3
            if self.rank == 0:
                if state is not None:
                    self.engine.module.save_pretrained(staging / "hf", state_dict=state)
                    self.tokenizer.save_pretrained(staging / "hf")
                (staging / CALLER_STATE).write_text(json.dumps(caller_state))
                store.begin(step)
            dist.barrier()  # nothing is uploaded before rank 0 has cleared an earlier save of this step
            try:
                part: dict | str = store.upload(step, staging)
            except Exception as e:  # every rank must reach the gather, or the others wait for ever
                part = f"rank {self.rank}: {type(e).__name__}: {e}"
            parts: list = [None] * self.cfg.num_ranks
            dist.all_gather_object(parts, part)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        failed = [p for p in parts if isinstance(p, str)]
        if failed:
            raise CheckpointError(f"checkpoint of step {step} not saved, an upload failed: {'; '.join(failed)}")
        if self.rank != 0:
            return None
        return target.uri(store.commit(step, parts, meta))

    def load_checkpoint(self, target: CheckpointTarget, name: str) -> dict:
        """Collective. Each rank downloads and verifies the checkpoint, restores its DeepSpeed state and RNG; returns
        the caller's state saved with it."""
        local = self.scratch / f"load-{self.rank}"
        shutil.rmtree(local, ignore_errors=True)
        try:
            target.store().load(name, local)
            self.engine.load_checkpoint(str(local / "deepspeed"), tag="state")
            set_rng_state(torch.load(local / "rng" / f"rank_{self.rank}.pt"))
            return json.loads((local / CALLER_STATE).read_text())
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def close(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
