"""The pools as the driver, the streaming pipeline and evaluation use them — `RolloutPool`, `RewardPool`,
`LearnerGroup` — and what they do when an actor dies mid-step.

Rollout and reward actors are created with `ft.max_actor_restarts` (platform/cluster.py): Ray restarts a dead one by
running its constructor again (a fresh engine on the initial model, a fresh verifier pool). Each fan-out returns a
small companion result per actor besides the data; the driver waits on those, so a death shows up as `RayActorError`
without the data ever passing through the driver. The driver then waits for the restart, hands a restarted engine the
weights it should serve, and issues that actor's shard again. Sample seeds come from (seed, step, prompt, sample), so a
re-issued shard samples what the lost one would have: no trajectory is lost or counted twice.

An actor that dies while idle fails no call: Ray restarts it behind the driver's back. Every companion result (and the
ping) therefore names the process that answered; a new process is a restart, counted (`ft/<pool>_restarts`) and readied
like any other.

A learner rank is not restarted: its optimizer state died with it. `LearnerLost` carries the cause; the driver stops
with the last complete checkpoint named, or resumes from it (`ft.auto_resume`).
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from ponder.data.stream import split_even
from ponder.types import WeightsVersion

RESTART_TIMEOUT_S = 600.0  # a restarted vLLM engine loads its model again; a verifier pool runs its self-tests
FAST_FAILURES = 10  # pings answered "died", 1 s apart, before an actor counts as gone for good


class ActorFailed(RuntimeError):
    """A rollout or reward actor died and cannot be brought back (its restarts are spent, or it does not start)."""


class NeedsCheckpoint(RuntimeError):
    """What only a restart of every actor from the last checkpoint repairs (or `ft.auto_resume` does for us)."""


class LearnerLost(NeedsCheckpoint):
    """A learner rank died (process killed, out of memory, node lost); its cause is chained."""


class WeightSyncLost(NeedsCheckpoint):
    """A restarted rollout engine cannot rejoin the learner's NCCL group, which was made with its dead predecessor."""


def reload(engine, weights: Optional[WeightsVersion]) -> None:
    """Give a restarted engine the weights it must serve (it came back with the initial model)."""
    if weights is None:
        return
    if not weights.fetchable:
        raise WeightSyncLost(f"a rollout engine was restarted, and with {weights.kind} weight sync it cannot rejoin "
                             "the learner's group")
    ray.get(engine.load_weights.remote(weights))


class ActorFanout:
    """One pool of restartable actors (rollout or reward). `run(submit, shards)` calls `submit(actor, shard)` on each
    actor with its shard, which returns (data ref, report ref); a shard whose actor dies is re-issued once the actor is
    back. A generation's or a scoring's report, and `ping(actor)`, name the process that answered (its pid): a new
    process is a restart. So a restart is counted even when the actor died idle and no call failed (Ray restarts it
    behind the caller's back). `on_restart(actor)` readies a restarted actor (a rollout engine loads the current
    weights)."""

    def __init__(self, name: str, actors: list, ping: Callable[[object], object], max_restarts: int,
                 on_restart: Optional[Callable[[object], None]] = None):
        self.name, self.actors, self.ping, self.max_restarts = name, actors, ping, max_restarts
        self.on_restart = on_restart or (lambda actor: None)
        self.lives = [0] * len(actors)  # restarts seen per actor (Ray allows `max_restarts`)
        self._pids: list = [ping(actor) for actor in actors]  # refs until first read: the first processes' pids

    def run(self, submit: Callable[[object, object], tuple], shards: list,
            valid: Callable[[object], bool] = lambda report: True) -> tuple[list, list]:
        """Shard i goes to actor i % len(actors). Returns (data refs, reports), in shard order. A report that is not
        `valid` comes from an actor that lost its state in a restart before it took the call (an engine's weights):
        the shard is re-issued once the actor is readied."""
        owner = [i % len(self.actors) for i in range(len(shards))]
        pairs = [submit(self.actors[owner[i]], shard) for i, shard in enumerate(shards)]
        reports: list = [None] * len(shards)
        pending = {pair[1]: i for i, pair in enumerate(pairs)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            try:
                reports[i] = ray.get(ready[0])
            except RayActorError as e:
                self.recover(owner[i], e)
            else:
                # (a weight push answers with the version alone: a restart shows at the next generation)
                restarted = hasattr(reports[i], "pid") and self.observe(owner[i], reports[i].pid)
                if valid(reports[i]):
                    continue
                if not restarted:
                    raise RuntimeError(f"{self.name} actor {owner[i]} answered {reports[i]}, which does not meet "
                                       "what it was asked for, and it was not restarted: a bug, please report it")
            pairs[i] = submit(self.actors[owner[i]], shards[i])
            pending[pairs[i][1]] = i
        return [pair[0] for pair in pairs], reports

    def observe(self, index: int, pid: int) -> bool:
        """Actor `index` answered from process `pid`. Returns whether that is a restart (then counted and readied)."""
        known = self._pids[index]
        if isinstance(known, ray.ObjectRef):
            try:
                known = ray.get(known)
            except RayActorError:
                known = None  # its first process died before it answered
        self._pids[index] = pid
        if pid == known:
            return False
        self.lives[index] += 1
        self.on_restart(self.actors[index])
        return True

    def check(self, index: int) -> bool:
        """Ping actor `index`: whether it was restarted since it last answered (then it is counted and readied; one
        that is dead is waited for as in `recover`)."""
        try:
            return self.observe(index, ray.get(self.ping(self.actors[index])))
        except RayActorError as e:
            return self.recover(index, e)

    def recover(self, index: int, error: RayActorError) -> bool:
        """After `error` from actor `index`, wait until it answers again. Returns whether it is a new process (Ray
        restarted it; it is readied) rather than the same one (it was out of reach for a moment, or already
        recovered for another shard)."""
        if getattr(error, "actor_init_failed", False):  # its constructor raised: Ray does not restart it
            raise ActorFailed(f"{self.name} actor {index} could not start; cause:\n{error}") from error
        if self.lives[index] >= self.max_restarts:
            raise ActorFailed(f"{self.name} actor {index} died after {self.lives[index]} restarts "
                              f"(ft.max_actor_restarts={self.max_restarts}); cause:\n{error}") from error
        return self.observe(index, self._wait_for(index))

    def _wait_for(self, index: int) -> int:
        """The pid of actor `index` once it answers; ActorFailed if it does not within RESTART_TIMEOUT_S."""
        actor, deadline, died = self.actors[index], time.monotonic() + RESTART_TIMEOUT_S, 0
        while True:
            # While Ray restarts the actor a call fails at once with ActorUnavailableError: ask again until the
            # deadline (a vLLM engine loads its model again). ActorDiedError means Ray has given it up, unless Ray has
            # not yet seen the death the caller saw: allow a few of those.
            try:
                return ray.get(self.ping(actor), timeout=max(1.0, deadline - time.monotonic()))
            except (ActorUnavailableError, GetTimeoutError) as again:
                cause: Exception = again
            except RayActorError as again:
                cause, died = again, died + 1
                if getattr(again, "actor_init_failed", False) or died >= FAST_FAILURES:
                    break
            if time.monotonic() > deadline:
                break
            time.sleep(1.0)
        raise ActorFailed(f"{self.name} actor {index} died and did not come back:\n{cause}") from cause

    @property
    def restarts(self) -> int:
        return sum(self.lives)


class RolloutPool:
    """The rollout pool as the driver uses it: generate with recovery, and push weights that a restarted engine gets
    again (it comes back serving the initial model)."""

    def __init__(self, actors: list, max_restarts: int):
        self.actors = actors
        self.weights: Optional[WeightsVersion] = None  # the newest weights every engine must serve
        self.fanout = ActorFanout("rollout", actors, lambda a: a.pid.remote(), max_restarts, self._reload)

    def generate(self, requests: list, sampling, min_version: int = 0) -> tuple[list, int]:
        """Even, consecutive shards, one per engine: (trajectory-list refs, tokens generated). Every trajectory comes
        from weights of at least `min_version` and, once weights were pushed through `push`, from those."""
        expected = max(min_version, self.weights.version if self.weights else 0)
        # Pushed weights are loaded before `push` returns: engines need not wait for them, and must not, since one
        # that was restarted while idle would wait for weights nobody sends. Its answer shows it; it is reloaded.
        wait_for = min_version if self.weights is None else 0
        refs, reports = self.fanout.run(
            lambda actor, shard: actor.generate_batch.options(num_returns=2).remote(shard, sampling, wait_for),
            split_even(requests, len(self.actors)), valid=lambda report: report.oldest_version >= expected)
        return refs, sum(report.tokens for report in reports)

    def push(self, handle: WeightsVersion) -> None:
        self.weights = handle
        self.fanout.run(lambda actor, _: (None, actor.load_weights.remote(handle)), [None] * len(self.actors))

    def adopt(self, handle: Optional[WeightsVersion]) -> None:
        """Weights pushed by the streaming pipeline (platform/pipeline.py): what a restarted engine gets."""
        self.weights = handle

    def _reload(self, actor) -> None:
        reload(actor, self.weights)


class RewardPool:
    """The reward pool as the driver uses it: each generated batch scored round-robin, re-scored if its actor died."""

    def __init__(self, actors: list, max_restarts: int):
        self.actors = actors
        self.fanout = ActorFanout("reward", actors, lambda a: a.pid.remote(), max_restarts)

    def score(self, generated: list) -> tuple[list, list]:
        """(scored trajectory-list refs, ScoreReports) in the order of `generated`."""
        return self.fanout.run(lambda actor, ref: tuple(actor.score.options(num_returns=2).remote(ref)), generated)

    def observe(self, scorers: list[tuple[object, int]]) -> None:
        """(reward actor, the process that answered it last), as the trajectory buffer saw them: restarts are counted
        as if the pool had called the actors itself."""
        for actor, pid in scorers:
            self.fanout.observe(self.actors.index(actor), pid)


class LearnerGroup:
    """The learner's ranks as one (`Cluster.learner_group` makes it). Every call goes to every rank, as DeepSpeed's
    collectives need, and returns rank 0's answer; a rank's death raises `LearnerLost` at once (`on_learners`). With
    PPO, `critic` is the value model's own group, trained beside the policy and checkpointed with it."""

    def __init__(self, ranks: list, placement_group=None, critic: Optional["LearnerGroup"] = None,
                 warmup_steps: int = 0):
        self.ranks, self.placement_group = ranks, placement_group  # the group is removed with it (Cluster.retire)
        self.critic, self.warmup_steps = critic, warmup_steps
        self.demonstrations: Optional[Callable[[], tuple]] = None  # algo.replay_data: each step's (template, problems)

    def train(self, *batches, step: Optional[int] = None) -> dict[str, float]:
        """Training step `step` on these scored batches (refs), with the next demonstrations if any; the metrics.
        With a value model: its values of the samples first, then the policy's update and the value model's side by
        side; during the value model's warm-up (steps up to algo.ppo.warmup_steps) the policy is not updated."""
        demos = self.demonstrations() if self.demonstrations else None
        if self.critic is None:
            return self._all("train", *batches, demos=demos)
        values = ray.put(self.critic._all("values", *batches))
        update = step is None or step > self.warmup_steps
        refs = [rank.train.remote(*batches, demos=demos, values=values, update=update) for rank in self.ranks]
        refs += [rank.train.remote(*batches, values=values) for rank in self.critic.ranks]
        results = gather(refs)
        return {**results[0], **results[len(self.ranks)], "critic/warmup": float(not update)}

    def train_supervised(self, batches: list, epochs: int, seed: int) -> dict[str, float]:
        """Fine-tune on these trajectory batches (refs) as demonstrations; the metrics."""
        return self._all("train_supervised", *batches, epochs=epochs, seed=seed)

    def reset(self) -> None:
        """Every rank back to the initial model with a fresh optimizer."""
        self._all("reset")

    def publish(self, version: int) -> WeightsVersion:
        """The current weights, published as `version` through the open transport."""
        return self._all("publish_weights", version)

    def save(self, target, step: int, caller_state: dict, meta: dict, export_hf: bool) -> str:
        """A checkpoint of `step`, every rank uploading its part from its node; its URI. The value model's goes
        first, under `critic/`: a complete policy checkpoint implies a complete value-model one."""
        if self.critic is not None:
            self.critic.save(target.under("critic"), step, {}, meta, export_hf=False)
        return self._all("save_checkpoint", target, step, caller_state, meta, export_hf)

    def load(self, target, name: str) -> dict:
        """Every rank (and the value model's) restored from checkpoint `name`; the caller state saved with it."""
        if self.critic is not None:
            self.critic.load(target.under("critic"), name)
        return self._all("load_checkpoint", target, name)

    def save_hf(self, out_dir: str) -> str:
        """The policy in Hugging Face format in `out_dir`, on rank 0's node."""
        return self._all("save_hf", out_dir)

    def _all(self, method: str, *args, **kwargs):
        return on_learners(self.ranks, lambda rank: getattr(rank, method).remote(*args, **kwargs))[0]


def on_learners(learners: list, call: Callable[[object], object]) -> list:
    """`call(rank)` on every learner rank; results in rank order (`gather`)."""
    return gather([call(rank) for rank in learners])


def gather(refs: list) -> list:
    """The results of learner ranks' calls, in order. Fails fast: if one rank dies the others may hang in a
    collective waiting for it, so its death is raised as soon as it is seen (`LearnerLost`)."""
    results, pending = {}, list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            results[ready[0]] = ray.get(ready[0])
        except RayActorError as e:
            raise LearnerLost(f"a learner rank died: {e}") from e
        except RayTaskError:
            # A rank whose peer died can fail first (gloo: connection reset by peer): blame the death if there is one.
            death = _death_among(pending, wait_s=10.0)
            if death is not None:
                raise LearnerLost(f"a learner rank died: {death}") from death
            raise
    return [results[ref] for ref in refs]


def _death_among(refs: list, wait_s: float) -> Optional[RayActorError]:
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=wait_s)
    for ref in ready:
        try:
            ray.get(ref)
        except RayActorError as e:
            return e
        except RayTaskError:
            continue
    return None
