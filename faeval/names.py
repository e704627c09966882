"""The one error every registry lookup gives: an unknown name, listed with the valid ones.

>>> check_known("arch", "resmlp", ["resmlp", "vit"])
>>> check_known("arch", "resnet50", ["resmlp", "vit"])
Traceback (most recent call last):
...
ValueError: unknown arch 'resnet50'; valid archs: resmlp, vit
"""
from __future__ import annotations

from collections.abc import Iterable

__all__ = ["check_known"]


def check_known(kind: str, name, valid: Iterable[str], hint: str = "") -> None:
    """Raise ``ValueError`` naming ``kind``, the unknown ``name`` and the valid names (sorted), plus ``hint``."""
    valid = list(valid)
    if name not in valid:
        raise ValueError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(valid))}{hint}")
