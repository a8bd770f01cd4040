"""How the driver tells a restarted actor from the one it knew: by the process that answers (platform/pools.py)."""

from __future__ import annotations

import pytest
from ray.exceptions import ActorDiedError

from ponder.platform.pools import ActorFailed, ActorFanout


def fanout(readied: list, max_restarts: int = 2) -> ActorFanout:
    first = {"engine-0": 100, "engine-1": 200}
    return ActorFanout("rollout", list(first), ping=first.get, max_restarts=max_restarts, on_restart=readied.append)


def test_a_new_process_is_one_restart_counted_once_and_readied():
    readied: list = []
    pool = fanout(readied)
    assert not pool.observe(0, 100) and not pool.observe(1, 200)  # the first processes
    assert pool.observe(1, 201)  # Ray restarted engine-1 while it was idle: no call failed
    assert not pool.observe(1, 201)  # its next answers are from the same process
    assert pool.observe(1, 202)
    assert (pool.lives, pool.restarts, readied) == ([0, 2], 2, ["engine-1", "engine-1"])


def test_a_death_after_the_last_allowed_restart_fails_with_the_limit_named():
    pool = fanout([], max_restarts=1)
    pool.observe(0, 101)
    with pytest.raises(ActorFailed, match=r"rollout actor 0 died after 1 restarts \(ft.max_actor_restarts=1\)"):
        pool.recover(0, ActorDiedError())
