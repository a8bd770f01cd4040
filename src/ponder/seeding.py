"""Seeds derived from coordinates, so that any sample can be reproduced from (seed, step, prompt, sample)."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integer coordinates; distinct coordinates give unrelated seeds.

    >>> derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    True
    """
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def rng_state() -> dict:
    """This process's torch RNG states (the CPU generator's, and the current CUDA device's where there is one): what a
    learner rank's checkpoint keeps."""
    import torch

    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore `rng_state()`. A CUDA state is restored where there is a CUDA device (a GPU checkpoint resumed on CPU
    has none to restore it to)."""
    import torch

    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
