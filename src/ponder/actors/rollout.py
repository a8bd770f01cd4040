"""The rollout actor: hosts one vLLM engine that runs continuously and turns prompts into version-stamped trajectories.

One thread owns the engine and steps it (vLLM's `LLMEngine` is not thread-safe). Every other call hands that thread a
command and, where it must, waits: `generate` (blocking: evaluation and the synchronous loop), `stream` (returns at
once: finished groups are scored on the reward pool and put into the trajectory buffer, actor to actor, so the driver
only ever holds handles) and `load_weights`. Between two decode steps the thread applies weight updates and admits
waiting requests, so an update can land mid-generation (partial rollouts): running requests are preempted, recompute
their KV cache under the new weights and go on, and every token records the version that sampled it. Without
`interrupt` an update waits until no request is running and holds new requests back meanwhile.

Each of a prompt's `n` samples is its own request with a seed derived from (run seed, step, prompt, sample), so a
run's samples are reproducible. Weights arrive as a `WeightsVersion` handle (transport/weights.py), are verified, then
reloaded in place. A plain class; Ray (a threaded actor) is applied in `platform/cluster.py`.
Talks to: transport (weights in), types (trajectories out), the reward and buffer actors it is handed.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional

from ponder.platform.config import RolloutConfig
from ponder.transport.weights import verify
from ponder.types import GenerationReport, GroupMeta, RolloutRequest, Trajectory, WeightsVersion


@dataclass(frozen=True)
class Sampling:
    """Per-call sampling settings (training and evaluation use the same engine with different ones)."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int
    # EOS is suppressed before this many tokens (length-controlled runs, benchmarks); the logprobs recorded for those
    # tokens are of that suppressed distribution, which is the one that sampled them.
    min_tokens: int = 0
    # Keep sampling past EOS up to max_tokens without changing the distribution (exact lengths for benchmarks).
    ignore_eos: bool = False
    regex: Optional[str] = None  # structured output: completions must match it (a judge's "Score: N" line)


@dataclass
class _Sample:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    finish_reason: str = "unknown"


@dataclass
class _Group:
    request: RolloutRequest
    prompt_ids: list[int]
    samples: list[_Sample]
    remaining: int
    on_done: Callable[[list[Trajectory]], None]


@dataclass
class _Submission:
    requests: list[RolloutRequest]
    sampling: Sampling
    min_version: int  # admitted only once the engine holds at least these weights (the staleness bound)
    on_group: Callable[[list[Trajectory]], None]  # called on the engine thread with each finished group


@dataclass
class _Command:
    run: Callable[[], object]
    interrupt: bool  # True: at the next step boundary; False: once no request is running
    done: Future


class RolloutWorker:
    def __init__(self, model_path: str, dtype: str, cfg: RolloutConfig, seed: int):
        from vllm import LLM

        on_gpu = cfg.num_gpus > 0
        extra = ({"gpu_memory_utilization": cfg.gpu_memory_utilization} if on_gpu
                 else {"kv_cache_memory_bytes": int(cfg.kv_cache_gb * (1 << 30)),
                       # vLLM's CPU build cannot rewind a seeded request's generator after a partial (chunked) prefill
                       # ("CPU Generator does not use offset"), which requests resuming after a weight update hit.
                       # Whole prefills only, with a token budget that fits the longest sequence.
                       "enable_chunked_prefill": False, "max_num_batched_tokens": max(cfg.max_model_len, 8192)})
        if cfg.weight_sync == "nccl":
            from vllm.config import WeightTransferConfig

            extra["weight_transfer_config"] = WeightTransferConfig(backend="nccl")
        self.llm = LLM(model=model_path, dtype=dtype, max_model_len=cfg.max_model_len, seed=seed,
                       enforce_eager=cfg.enforce_eager, tensor_parallel_size=cfg.tensor_parallel_size,
                       logprobs_mode="processed_logprobs", **extra)
        self.engine = self.llm.llm_engine
        self.engine.set_weight_version("0")  # every engine step is labelled with it (see _label_new_weights)
        self.tokenizer = self.llm.get_tokenizer()
        self.version = 0
        self.tokens_generated = 0
        self._inbox: queue.Queue = queue.Queue()
        self._waiting: deque[_Submission] = deque()
        self._commands: deque[_Command] = deque()
        self._live: dict[str, tuple[_Group, int]] = {}  # request id -> (its group, sample index)
        self._ids = itertools.count()
        self._paused = False  # the core scheduler is paused (weights being replaced): do not wait on its outputs
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    # -- calls from the actor's other threads -----------------------------------------------------------------------
    def generate(self, requests: list[RolloutRequest], sampling: Sampling, min_version: int = 0) -> list[Trajectory]:
        """`sampling.n` trajectories per request, in request order, each with the engine's logprobs and versions."""
        if not requests:
            return []
        done: Future = Future()
        groups: dict[int, list[Trajectory]] = {}

        def collect(group: list[Trajectory]) -> None:
            groups[group[0].group_id] = group
            if len(groups) == len(requests):
                done.set_result(None)

        self._inbox.put(_Submission(requests, sampling, min_version, collect))
        self._wait(done)
        return [t for req in requests for t in groups[req.group_id]]

    def generate_batch(self, requests: list[RolloutRequest], sampling: Sampling, min_version: int = 0
                       ) -> tuple[list[Trajectory], GenerationReport]:
        """`generate`, and its report: the small second result is what the driver waits on (platform/recovery.py), so
        that it notices a dead or restarted engine without pulling the trajectories."""
        trajectories = self.generate(requests, sampling, min_version)
        return trajectories, GenerationReport(sum(len(t.response_ids) for t in trajectories),
                                              min((t.policy_version for t in trajectories), default=self.version),
                                              os.getpid())

    def stream(self, requests: list[RolloutRequest], sampling: Sampling, min_version: int, rewards: list,
               buffer) -> None:
        """Generate in the background. Each finished group goes into `buffer` with the reward actor to score it
        (round-robin by group id); the buffer asks for the score, so the refs it keeps outlive this engine, and the
        trajectories never pass through the driver."""
        def emit(group: list[Trajectory]) -> None:
            buffer.put.remote(group_meta(group), group, rewards[group[0].group_id % len(rewards)])

        self._check()
        self._inbox.put(_Submission(requests, sampling, min_version, emit))

    def load_weights(self, handle: WeightsVersion, interrupt: bool = False) -> int:
        """Verify, then load in place on the engine thread; returns the version once the engine serves it. Raises
        `WeightsIntegrityError` (and keeps the old weights) on a mismatch.

        With NCCL weight sync the bytes already arrived during the learner's broadcast; this only confirms the version.
        """
        if handle.path == "nccl":
            if self.version != handle.version:
                raise RuntimeError(f"NCCL push of version {handle.version} did not reach this engine "
                                   f"(still at {self.version})")
            return self.version
        directory = verify(handle)  # off the engine thread: hashing never pauses generation

        def reload() -> int:
            with self._engine_paused():
                self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(directory)})
                self._label_new_weights(handle.version)
            return self.version

        return self._call(reload, interrupt)

    def stats(self) -> dict[str, float]:
        """Liveness and load; raises the engine thread's error (with its cause) if it died."""
        self._check()
        return {"version": self.version, "running": len(self._live), "waiting": len(self._waiting),
                "tokens_generated": self.tokens_generated, "pid": os.getpid()}

    # -- NCCL weight sync (GPU): driven by the learner through transport.nccl.RolloutFanoutClient ------------------
    # A push spans several calls; the engine core's scheduler stays paused from start to finish, so no token is
    # sampled from half-updated weights.
    def init_weight_transfer(self, init_info: dict) -> None:
        self._call(lambda: self.llm.init_weight_transfer_engine({"init_info": init_info}), interrupt=True)

    def start_weight_update(self) -> None:
        def start() -> None:
            self._pause_engine()
            self.llm.start_weight_update()

        self._call(start, interrupt=True)

    def update_weights(self, update_info: dict) -> None:
        self._call(lambda: self.llm.update_weights({"update_info": update_info}), interrupt=True)

    def finish_weight_update(self, version: str | None) -> None:
        def finish() -> None:
            self.llm.finish_weight_update(version)
            self._label_new_weights(int(version) if version is not None else self.version)
            self._resume_engine()

        self._call(finish, interrupt=True)

    def pid(self) -> int:
        """The driver's ping: this process (a new one once Ray has restarted the actor); raises as `stats` does."""
        self._check()
        return os.getpid()

    def close(self) -> None:
        """Stop the engine thread, then the engine's own processes (rather than when the actor is killed)."""
        self._stop.set()
        self._thread.join(timeout=30)
        self.engine.engine_core.shutdown()

    # -- the engine thread ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                stepping = self.engine.has_unfinished_requests() and not self._paused
                self._drain_inbox(block=not stepping)
                self._run_due_commands()
                self._admit()
                if self.engine.has_unfinished_requests() and not self._paused:
                    self._record(self.engine.step())
        except BaseException as e:  # noqa: BLE001 - kept; every waiting or later caller re-raises it with the cause
            self._error = e

    def _drain_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.1) if block else self._inbox.get_nowait()
            while True:
                (self._commands if isinstance(item, _Command) else self._waiting).append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            return

    def _run_due_commands(self) -> None:
        while self._commands and (self._commands[0].interrupt or not self._live):
            command = self._commands.popleft()
            try:
                command.done.set_result(command.run())
            except Exception as e:  # a refused update fails its caller, not the engine
                command.done.set_exception(e)

    def _admit(self) -> None:
        """Waiting submissions enter the engine once it has their weights and no update is waiting."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        if self._commands:
            return
        # Not first-in-first-out: a batch whose weights are here must never wait behind one whose weights are not.
        ready = [sub for sub in self._waiting if sub.min_version <= self.version]
        self._waiting = deque(sub for sub in self._waiting if sub.min_version > self.version)
        for sub in ready:
            s = sub.sampling
            for req in sub.requests:
                ids = self.tokenizer(req.prompt_text, add_special_tokens=False)["input_ids"]
                group = _Group(req, ids, [_Sample() for _ in range(s.n)], remaining=s.n, on_done=sub.on_group)
                for k in range(s.n):
                    request_id = str(next(self._ids))
                    self._live[request_id] = (group, k)
                    self.engine.add_request(request_id, TokensPrompt(prompt_token_ids=ids), SamplingParams(
                        n=1, temperature=s.temperature, top_p=s.top_p, max_tokens=req.max_tokens or s.max_tokens,
                        min_tokens=s.min_tokens, ignore_eos=s.ignore_eos, logprobs=0, seed=req.seed + k,
                        output_kind=RequestOutputKind.DELTA,
                        structured_outputs=StructuredOutputsParams(regex=s.regex) if s.regex else None))

    def _record(self, outputs: list) -> None:
        """Append each request's new tokens, stamped with the weights that sampled them; hand on finished groups."""
        for out in outputs:
            group, k = self._live[out.request_id]
            sample, delta = group.samples[k], out.outputs[0]
            sample.token_ids.extend(delta.token_ids)
            sample.logprobs.extend(lp[tok].logprob for lp, tok in zip(delta.logprobs, delta.token_ids))
            self.tokens_generated += len(delta.token_ids)
            if out.finished:
                sample.finish_reason = delta.finish_reason or "unknown"
                sample.versions = token_versions(delta.weight_versions, len(sample.token_ids), self.version)
                del self._live[out.request_id]
                group.remaining -= 1
                if group.remaining == 0:
                    group.on_done(self._trajectories(group))

    def _trajectories(self, group: _Group) -> list[Trajectory]:
        req = group.request
        return [Trajectory(group_id=req.group_id, sample_index=k, problem=req.problem, prompt_ids=list(group.prompt_ids),
                           response_ids=s.token_ids, response_text=self.tokenizer.decode(s.token_ids,
                                                                                         skip_special_tokens=True),
                           logprobs=s.logprobs, finish_reason=s.finish_reason,
                           policy_version=min(s.versions, default=self.version), token_versions=s.versions)
                for k, s in enumerate(group.samples)]

    def _label_new_weights(self, version: int) -> None:
        """Call with the scheduler paused, right after new weights are in. vLLM labels every engine step with the
        current weight version, and finished outputs carry the labels as spans: that is where token versions come
        from (the engine core runs ahead of this thread, so a label taken here could be a step late)."""
        self.engine.set_weight_version(str(version))
        # Cached KV was computed by the old weights: drop it, and make running requests recompute theirs, so that
        # every later token is sampled from exactly the new policy.
        self.engine.reset_prefix_cache(reset_running_requests=True)
        self.version = version

    @contextmanager
    def _engine_paused(self):
        self._pause_engine()
        try:
            yield
        finally:
            self._resume_engine()

    def _pause_engine(self) -> None:
        """No engine step runs until `_resume_engine` (outputs already computed are still delivered). An in-process
        engine core only steps when this thread asks it to, so it needs no pause."""
        self._paused = True
        if hasattr(self.engine.engine_core, "call_utility"):
            self.engine.engine_core.call_utility("pause_scheduler", "keep", False)

    def _resume_engine(self) -> None:
        if hasattr(self.engine.engine_core, "call_utility"):
            self.engine.engine_core.call_utility("resume_scheduler")
        self._paused = False

    # -- helpers for the calling threads ----------------------------------------------------------------------------
    def _call(self, run: Callable[[], object], interrupt: bool):
        self._check()
        done: Future = Future()
        self._inbox.put(_Command(run, interrupt, done))
        return self._wait(done)

    def _wait(self, done: Future):
        while True:
            try:
                return done.result(timeout=1.0)
            except TimeoutError:
                self._check()  # the engine thread died without reaching this future

    def _check(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"rollout engine loop failed: {self._error!r}") from self._error


def token_versions(spans, num_tokens: int, current: int) -> list[int]:
    """vLLM's `WeightVersionSpan`s ([start, end) -> version label) as one version per output token.

    >>> from types import SimpleNamespace as Span
    >>> token_versions([Span(version="3", start=0, end=2), Span(version="4", start=2, end=5)], 5, 4)
    [3, 3, 4, 4, 4]
    """
    if not spans:  # no step was labelled (no tokens, or an engine that does not label): the weights it holds now
        return [current] * num_tokens
    versions = [int(spans[0].version)] * num_tokens
    for span in spans:
        versions[span.start : span.end] = [int(span.version)] * (span.end - span.start)
    return versions


def group_meta(group: list[Trajectory]) -> GroupMeta:
    versions = [v for t in group for v in (t.token_versions or [t.policy_version])]
    return GroupMeta(group_id=group[0].group_id, num_samples=len(group), min_version=min(versions),
                     max_version=max(versions), num_tokens=sum(len(t.response_ids) for t in group))
