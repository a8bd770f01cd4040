"""The rollout actor: hosts one vLLM engine that runs continuously and turns prompts into version-stamped trajectories.

One thread owns the engine and steps it (vLLM's `LLMEngine` is not thread-safe). Every other call hands that thread a
command and, where it must, waits: `generate` (blocking: evaluation and the synchronous loop), `stream` (returns at
once: finished groups are scored on the reward pool and put into the trajectory buffer, actor to actor, so the driver
only ever holds handles) and `load_weights`. Between two decode steps the thread applies weight updates and admits
waiting requests, so an update can land mid-generation (partial rollouts): running requests are preempted, recompute
their KV cache under the new weights and go on, and every token records the version that sampled it. Without
`interrupt` an update waits until no request is running and holds new requests back meanwhile.

Each of a prompt's `n` samples is its own request with a seed derived from (run seed, step, prompt, sample), so a
run's samples are reproducible. With a thinking budget (`Thinking`, budget forcing) a sample is generated in segments:
thinking stops at the budget or at `</think>`; the engine thread then appends environment text (the closing text and
answer prefix, or a continuation cue that replaces an early close) and submits the sample again with everything so far
as its prompt, so the policy's own tokens keep their exact logprobs and the environment's are marked as not sampled.
Multi-turn episodes (`rollout.env`) use the same segments: a model turn ends at EOS, at one of the environment's stop
strings or at the per-turn cap; the environment answers it on a small thread pool (`envs/`: a tool run in the
sandbox, a critique), so decoding of other samples goes on meanwhile; its observation is appended as environment
tokens and the next turn is submitted with the whole episode as its prompt (the prefix cache keeps the earlier KV). A
failing or hung environment step masks its episode with the reason; episodes end cleanly at the turn and token caps.
Weights arrive as a `WeightsVersion` handle, fetched and verified by the transport's receiver (`ponder.transport`),
then reloaded in place. A plain
class; Ray (a threaded actor) is applied in `platform/cluster.py`.
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
from dataclasses import dataclass
from typing import Callable, Optional

from ponder.actors.episodes import EnvironmentSteps, EnvStep
from ponder.actors.samples import Group, Sample, Sampling, Thinking, token_versions
from ponder.data.template import THINK_CLOSE, chat_observation, chat_prompt
from ponder.platform.config import RolloutConfig
from ponder.seeding import derive_seed
from ponder.transport import WeightReceiver, engine_options, open_receiver, this_node
from ponder.types import GenerationReport, GroupMeta, RolloutRequest, Trajectory, WeightsVersion

__all__ = ["RolloutWorker", "Sampling", "Thinking", "token_versions"]


@dataclass
class _Submission:
    requests: list[RolloutRequest]
    sampling: Sampling
    min_version: int  # admitted only once the engine holds at least these weights (the staleness bound)
    on_group: Callable[[list[Trajectory]], None]  # called on the engine thread with each finished group


@dataclass
class _Command:
    run: Callable[[], object]
    interrupt: bool  # True: at the next step boundary; False: once no request or episode is running
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
        extra.update(engine_options(cfg.weight_sync))  # the kind placement left open (auto) needs nothing here
        self.llm = LLM(model=model_path, dtype=dtype, max_model_len=cfg.max_model_len, seed=seed,
                       enforce_eager=cfg.enforce_eager, tensor_parallel_size=cfg.tensor_parallel_size,
                       logprobs_mode="processed_logprobs", **extra)
        self.engine = self.llm.llm_engine
        self.engine.set_weight_version("0")  # every engine step is labelled with it (see _label_new_weights)
        self.tokenizer = self.llm.get_tokenizer()
        self.version = 0
        self._receivers: dict[str, WeightReceiver] = {}  # by transport kind, opened on first use
        self.tokens_generated = 0
        self._inbox: queue.Queue = queue.Queue()
        self._waiting: deque[_Submission] = deque()
        self._commands: deque[_Command] = deque()
        self._live: dict[str, tuple[Group, int]] = {}  # request id -> (its group, sample index)
        self._env_steps = EnvironmentSteps(post=self._inbox.put)
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
        self._check_requests(requests, sampling)
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
        """`generate`, and its report: the small second result is what the driver waits on (platform/pools.py), so
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
            buffer.put.remote(GroupMeta.of(group), group, rewards[group[0].group_id % len(rewards)])

        self._check()
        self._check_requests(requests, sampling)
        self._inbox.put(_Submission(requests, sampling, min_version, emit))

    def load_weights(self, handle: WeightsVersion, interrupt: bool = False) -> int:
        """Fetch and verify, then load in place on the engine thread; returns the version once the engine serves it.
        Raises `WeightsIntegrityError` (and keeps the old weights) on a mismatch. A transport that writes into the
        engine itself (NCCL) delivered the bytes during the learner's push: this only confirms the version."""
        if handle.kind not in self._receivers:
            self._receivers[handle.kind] = open_receiver(handle.kind)
        directory = self._receivers[handle.kind].fetch(handle)  # off the engine thread: never pauses generation
        if directory is None:
            if self.version != handle.version:
                raise RuntimeError(f"the push of weights version {handle.version} did not reach this engine (still "
                                   f"at {self.version})")
            return self.version

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
                "env_steps": len(self._env_steps), "tokens_generated": self.tokens_generated, "pid": os.getpid()}

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

    def node_id(self) -> str:
        """The Ray node this engine landed on (the weight transport is chosen from it)."""
        return this_node()

    def close(self) -> None:
        """Stop the engine thread, then the engine's own processes (rather than when the actor is killed)."""
        self._stop.set()
        self._thread.join(timeout=30)
        self.engine.engine_core.shutdown()
        for receiver in self._receivers.values():
            receiver.close()
        self._env_steps.close()

    # -- the engine thread ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                stepping = self.engine.has_unfinished_requests() and not self._paused
                self._drain_inbox(block=not stepping)
                for step in self._env_steps.expired():
                    step.sample.mask_reason = "environment step took more than rollout.env.step_timeout_s " \
                                              f"({step.group.sampling.env.step_timeout_s:g}s)"
                    self._end_episode(step.group, step.sample, "env_error", step.turn)
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
                if isinstance(item, EnvStep):
                    self._env_replied(item)
                else:
                    (self._commands if isinstance(item, _Command) else self._waiting).append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            return

    def _run_due_commands(self) -> None:
        while self._commands and (self._commands[0].interrupt or not (self._live or self._env_steps)):
            command = self._commands.popleft()
            try:
                command.done.set_result(command.run())
            except Exception as e:  # a refused update fails its caller, not the engine
                command.done.set_exception(e)

    def _admit(self) -> None:
        """Waiting submissions enter the engine once it has their weights and no update is waiting."""
        if self._commands:
            return
        # Not first-in-first-out: a batch whose weights are here must never wait behind one whose weights are not.
        ready = [sub for sub in self._waiting if sub.min_version <= self.version]
        self._waiting = deque(sub for sub in self._waiting if sub.min_version > self.version)
        for sub in ready:
            s = sub.sampling
            for req in sub.requests:
                ids = self._ids_of(chat_prompt(self.tokenizer, req.prompt_text) if req.chat else req.prompt_text)
                group = Group(req, s, ids, [Sample(thinking=s.thinking is not None) for _ in range(s.n)],
                              remaining=s.n, on_done=sub.on_group,
                              env=self._env_steps.environment(s.env))
                for k in range(s.n):
                    self._submit(group, k)

    def _submit(self, group: Group, k: int) -> None:
        """Send sample k of `group` to the engine: its next segment, with everything generated so far as context."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        s, req, sample = group.sampling, group.request, group.samples[k]
        max_tokens = group.max_tokens - len(sample.token_ids)
        if sample.thinking and group.budget is not None:
            max_tokens = min(max_tokens, group.budget - len(sample.token_ids))
            if max_tokens <= 0:  # the budget is spent before this segment starts (a budget of 0, or cues)
                sample.finish_reason = "length"
                return self._submit(group, k) if self._next_segment(group, sample, closed=False) else self._done(group)
        if group.env is not None and s.env.max_turn_tokens:
            max_tokens = min(max_tokens, s.env.max_turn_tokens)
        stop = [THINK_CLOSE] if sample.thinking else list(group.env.stop) if group.env is not None else None
        seed = req.seed + k if sample.segments == 0 else derive_seed(req.seed, k, sample.segments)
        sample.segments += 1
        sample.segment_start = len(sample.token_ids)
        request_id = str(next(self._ids))
        self._live[request_id] = (group, k)
        self.engine.add_request(request_id, TokensPrompt(prompt_token_ids=group.prompt_ids + sample.token_ids),
                                SamplingParams(
            n=1, temperature=s.temperature, top_p=s.top_p, max_tokens=max_tokens,
            min_tokens=s.min_tokens if sample.segments == 1 else 0, ignore_eos=s.ignore_eos, logprobs=0, seed=seed,
            stop=stop or None, include_stop_str_in_output=True,
            output_kind=RequestOutputKind.DELTA,
            structured_outputs=StructuredOutputsParams(regex=s.regex) if s.regex else None))

    def _record(self, outputs: list) -> None:
        """Append each request's new tokens, stamped with the weights that sampled them; go on with a sample whose
        thinking ended (budget forcing), and hand on finished groups."""
        for out in outputs:
            group, k = self._live[out.request_id]
            sample, delta = group.samples[k], out.outputs[0]
            sample.append(list(delta.token_ids), [lp[tok].logprob for lp, tok in zip(delta.logprobs, delta.token_ids)],
                          [], sampled=1)
            self.tokens_generated += len(delta.token_ids)
            if not out.finished:
                continue
            del self._live[out.request_id]
            sample.finish_reason = delta.finish_reason or "unknown"
            sample.versions += token_versions(delta.weight_versions, len(sample.token_ids) - len(sample.versions),
                                              self.version)
            if self._next_segment(group, sample, closed=delta.stop_reason == THINK_CLOSE):
                self._submit(group, k)
            elif group.env is not None:
                self._env_turn(group, k)
            else:
                self._done(group)

    def _done(self, group: Group) -> None:
        group.remaining -= 1
        if group.remaining == 0:
            group.on_done(self._trajectories(group))

    def _next_segment(self, group: Group, sample: Sample, closed: bool) -> bool:
        """After a segment of a sample with a thinking budget: append the environment's text and say whether the sample
        goes on (True) or is finished."""
        if not sample.thinking:
            return False
        thinking, budget = group.sampling.thinking, group.budget
        if closed:
            close_at = self._close_start(sample)
            cue = self._ids_of(thinking.cue)
            if sample.extensions < thinking.extend and close_at + len(cue) < group.max_tokens:
                sample.truncate(close_at)  # closed early: reopen with the cue and think on
                sample.extensions += 1
                self._append_environment(sample, cue)
                return True
            sample.thinking, sample.thinking_tokens = False, close_at
            return len(sample.token_ids) < group.max_tokens
        if sample.finish_reason == "length" and budget is not None and len(sample.token_ids) >= budget:
            forced = self._ids_of(thinking.close + thinking.answer_prefix)
            sample.thinking, sample.thinking_tokens = False, len(sample.token_ids)
            if len(sample.token_ids) + len(forced) >= group.max_tokens:  # no room left to answer: truncated
                return False
            sample.forced = True
            self._append_environment(sample, forced)
            return True
        return False

    # -- multi-turn episodes (rollout.env): a turn is a segment; the environment answers it on its own threads -------
    def _env_turn(self, group: Group, k: int) -> None:
        """A model turn ended: hand its text to the environment, or end the episode at the token cap."""
        sample = group.samples[k]
        sample.turns += 1
        turn = self.tokenizer.decode(sample.token_ids[sample.segment_start:], skip_special_tokens=True)
        if len(sample.token_ids) >= group.max_tokens:
            return self._end_episode(group, sample, "max_tokens", turn)
        self._env_steps.start(group, k, turn)

    def _env_replied(self, step: EnvStep) -> None:
        """On the engine thread: append the environment's observation and go on, or end the episode."""
        group, sample = step.group, step.sample
        if not self._env_steps.finish(step):
            return  # it ran past its deadline: the episode has already ended
        try:
            reply = step.reply.result()
        except Exception as e:  # noqa: BLE001 - the environment's failure masks its episode, never the run
            sample.mask_reason = f"environment error: {e!r}"[:500]
            return self._end_episode(group, sample, "env_error", step.turn)
        for name, value in reply.metrics.items():
            sample.env_metrics[name] = sample.env_metrics.get(name, 0.0) + value
        if reply.answer:
            sample.attempts.append(step.turn)
        if reply.done:
            return self._end_episode(group, sample, "done", step.turn)
        if sample.turns >= group.sampling.env.max_turns:
            return self._end_episode(group, sample, "max_turns", step.turn)
        text = reply.observation
        if group.request.chat:  # as the model's template writes a message after an assistant turn
            text = chat_observation(self.tokenizer, text, group.sampling.env.chat_role,
                                    closed=sample.token_ids[-1] == self.tokenizer.eos_token_id)
        observation = self._ids_of(text)
        if len(sample.token_ids) + len(observation) >= group.max_tokens:
            return self._end_episode(group, sample, "max_tokens", step.turn)
        self._append_environment(sample, observation)
        self._submit(group, step.k)

    def _check_requests(self, requests: list[RolloutRequest], sampling: Sampling) -> None:
        """A bad environment or a chat request without a chat template fails its caller, not the engine thread."""
        self._env_steps.environment(sampling.env)
        if any(r.chat for r in requests):
            chat_prompt(self.tokenizer, "")

    def _end_episode(self, group: Group, sample: Sample, how: str, last_turn: str) -> None:
        """The last turn is the answer when the environment marked none."""
        sample.episode_end = how
        if not sample.attempts:
            sample.attempts.append(last_turn)
        self._done(group)

    def _append_environment(self, sample: Sample, ids: list[int]) -> None:
        sample.append(ids, [0.0] * len(ids), [self.version] * len(ids), sampled=0)

    def _close_start(self, sample: Sample) -> int:
        """Where the `</think>` that ended the running segment begins (the tokens that spell it end the sample)."""
        start = len(sample.token_ids) - 1
        while start > sample.segment_start and THINK_CLOSE not in self.tokenizer.decode(sample.token_ids[start:]):
            start -= 1
        return start

    def _ids_of(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _trajectories(self, group: Group) -> list[Trajectory]:
        req = group.request
        out = []
        for k, s in enumerate(group.samples):
            text = self.tokenizer.decode(s.token_ids, skip_special_tokens=True)
            thinking_tokens = s.thinking_tokens if group.sampling.thinking else self._tokens_before_close(text)
            out.append(Trajectory(
                group_id=req.group_id, sample_index=k, problem=req.problem, prompt_ids=list(group.prompt_ids),
                response_ids=s.token_ids, response_text=text, logprobs=s.logprobs, finish_reason=s.finish_reason,
                policy_version=min(s.versions, default=self.version), token_versions=s.versions,
                sampled_mask=s.sampled if 0 in s.sampled else [], thinking_tokens=thinking_tokens,
                forced_answer=s.forced, max_tokens=group.max_tokens, turns=max(s.turns, 1), attempts=s.attempts,
                episode_end=s.episode_end, env_metrics=s.env_metrics, masked=bool(s.mask_reason),
                mask_reason=s.mask_reason))
        return out

    def _tokens_before_close(self, text: str) -> Optional[int]:
        """Thinking length of a sample generated without a budget: the tokens of its text before the first `</think>`
        (re-tokenized: exact for the embedded tokenizer, within a token or two of the sampled ids for BPE); None if
        thinking never closed."""
        end = text.find(THINK_CLOSE)
        return None if end < 0 else len(self._ids_of(text[:end]))

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

