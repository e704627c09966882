"""Errors shared by the learning rules and the diagnostics (a leaf module: it imports nothing of faeval)."""
from __future__ import annotations

__all__ = ["MissingAuxStateError"]


class MissingAuxStateError(RuntimeError):
    """A diagnostic needs a learning rule's auxiliary state (feedback matrices, bridge nets) and it is absent."""
