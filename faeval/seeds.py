"""Independent random streams: one per purpose, derived from the run seed.

Every random draw of a run comes from a generator of its own, keyed by the run's
seed and a fixed purpose name (``"model-init"``, ``"feedback"``, ``"data-order/3"``,
...). Two purposes never share a stream, so for instance the feedback matrices of
DFA are independent of the model's initial weights (an earlier version drew both
from ``manual_seed(seed)``, and B_0 correlated -0.35 with ``embed.weight``).

The key is ``numpy.random.SeedSequence([seed, h])`` with ``h`` the first 8 bytes
of the purpose name's SHA-256: stable across Python sessions and platforms.

>>> stream_seed(42, "feedback") == stream_seed(42, "feedback")
True
>>> stream_seed(42, "feedback") != stream_seed(42, "model-init")
True
>>> a = torch.randn(3, generator=generator(42, "feedback"))
>>> torch.equal(a, torch.randn(3, generator=generator(42, "feedback")))
True
"""
from __future__ import annotations

import contextlib
import hashlib

import numpy as np
import torch

__all__ = ["stream_seed", "generator", "seeded"]


def stream_seed(seed: int, purpose: str) -> int:
    """The 63-bit seed of the stream ``purpose`` of run seed ``seed``."""
    if not isinstance(purpose, str) or not purpose:
        raise ValueError(f"purpose={purpose!r}: name the stream with a non-empty string")
    h = int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:8], "little")
    state = np.random.SeedSequence([int(seed) & (2 ** 64 - 1), h]).generate_state(1, np.uint64)[0]
    return int(state) >> 1


def generator(seed: int, purpose: str, device=None) -> torch.Generator:
    """A ``torch.Generator`` (on ``device``, CPU by default) for the stream ``purpose`` of ``seed``."""
    g = torch.Generator(device=device) if device is not None else torch.Generator()
    return g.manual_seed(stream_seed(seed, purpose))


@contextlib.contextmanager
def seeded(seed: int, purpose: str):
    """Run a block (e.g. building ``nn.Module``\\ s, which draw from the global RNG) on the
    stream ``purpose`` of ``seed``; the global CPU RNG is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, purpose))
        yield
