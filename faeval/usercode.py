"""Rules and architectures defined outside the package: their code in the run key, and in every worker.

A rule or an architecture that a user defines (in a notebook cell, a script or a module of
their own) and registers with ``@faeval.register_method`` / ``@faeval.register_arch`` is keyed
in the run store by its name *and* by a fingerprint of its code (:func:`fingerprint`), so
editing the class and running the cell again trains anew instead of loading the old class's
runs. The package's own rules and architectures carry no fingerprint: the cache version
covers them, and their run keys stay as they are.

The fingerprint hashes what the class executes, not where it stands: the bytecode,
constants and names of every function it defines (with their defaults and the simple
values they close over), its other class
attributes, the same of its bases outside faeval, and of the functions and classes of its
own module that its code refers to by name (a helper in another cell). Moving a cell or
editing a comment does not change it; changing a line of code does.

Worker processes import faeval afresh and would not know a class defined in a cell:
:func:`faeval.schedule.ship` serialises the user classes a set of run configs needs (by value, with
cloudpickle, for classes of ``__main__``) and :func:`faeval.schedule.install` registers them in the
worker, so ``fit_many(workers=N)`` and any ``executor=`` (Dask's) train them.

>>> import faeval
>>> from faeval.methods.dfa import DFA
>>> fingerprint(DFA) is None                      # a package rule: keyed by its name alone
True
>>> class Mine(DFA):
...     def local_credit(self, *args):
...         return super().local_credit(*args)
>>> fp = fingerprint(Mine); len(fp)
16
>>> class Mine(DFA):                              # the same class defined again: the same fingerprint
...     def local_credit(self, *args):
...         return super().local_credit(*args)
>>> fingerprint(Mine) == fp
True
>>> class Mine(DFA):                              # its code changed
...     def local_credit(self, *args):
...         return [0.5 * c for c in super().local_credit(*args)]
>>> fingerprint(Mine) == fp
False
"""
from __future__ import annotations

import hashlib
import sys
import types
import warnings
from collections.abc import Mapping

__all__ = ["fingerprint", "is_user_code", "code_key", "RegisteredAgainWarning",
           "warn_if_changed"]

#: libraries whose classes and functions are not user code (never fingerprinted)
_NOT_USER = ("torch", "builtins", "abc", "typing", "collections", "functools", "numpy", "math")


class RegisteredAgainWarning(UserWarning):
    """A name was registered again with different code (its runs are stored apart from the old code's)."""


def is_user_code(obj) -> bool:
    """Whether class or function ``obj`` is defined outside faeval and the libraries it builds on.

    A class counts as faeval's own only where a faeval module defines it under its name (a class
    that a doctest of the package defines is user code, as it would be in a notebook)."""
    module = getattr(obj, "__module__", None) or ""
    if module.split(".")[0] != "faeval":
        return module.split(".")[0] not in _NOT_USER
    found = sys.modules.get(module)
    for part in getattr(obj, "__qualname__", "").split("."):
        found = getattr(found, part, None)
    return found is not obj


def fingerprint(cls: type) -> str | None:
    """16 hex digits identifying the code of user class ``cls``; ``None`` for a class of faeval itself."""
    if not is_user_code(cls):
        return None
    h = hashlib.sha256()
    _Hasher(h, cls.__module__).cls(cls)
    return h.hexdigest()[:16]


class _Hasher:
    """Feeds a class's code (see the module's docs) into a hash, each object once."""

    def __init__(self, h, module: str) -> None:
        self.h, self.module, self.seen = h, module, set()

    def put(self, *parts) -> None:
        for p in parts:
            self.h.update(repr(p).encode())
            self.h.update(b"\0")

    def cls(self, cls: type) -> None:
        if id(cls) in self.seen:
            self.put("seen class", cls.__name__)
            return
        self.seen.add(id(cls))
        self.put("class", cls.__name__)
        for base in cls.__bases__:
            if is_user_code(base):
                self.cls(base)
            else:
                self.put("base", base.__module__, base.__qualname__)
        for name in sorted(cls.__dict__):
            if name in ("__dict__", "__weakref__", "__module__", "__doc__", "__qualname__"):
                continue
            self.put("attr", name)
            self.value(cls.__dict__[name])

    def value(self, v) -> None:
        if isinstance(v, (staticmethod, classmethod)):
            self.put(type(v).__name__)
            self.value(v.__func__)
        elif isinstance(v, property):
            for f in (v.fget, v.fset, v.fdel):
                self.value(f)
        elif isinstance(v, types.FunctionType):
            self.function(v)
        elif isinstance(v, type):
            self.cls(v) if is_user_code(v) else self.put("type", v.__module__, v.__qualname__)
        elif isinstance(v, (int, float, str, bytes, bool, type(None))):
            self.put(v)
        elif isinstance(v, (tuple, list, frozenset, set)):
            self.put(type(v).__name__, len(v))
            for x in (sorted(v, key=repr) if isinstance(v, (set, frozenset)) else v):
                self.value(x)
        elif isinstance(v, dict):
            self.put("dict", len(v))
            for k in sorted(v, key=repr):
                self.value(k)
                self.value(v[k])
        else:                                        # an object: its type says what it is, not its address
            self.put("object", type(v).__module__, type(v).__qualname__)

    def function(self, f: types.FunctionType) -> None:
        if id(f) in self.seen:
            self.put("seen function", f.__name__)
            return
        self.seen.add(id(f))
        self.put("function", f.__name__)
        self.value(f.__defaults__)
        self.value(f.__kwdefaults__)
        for name, cell in zip(f.__code__.co_freevars, f.__closure__ or ()):   # e.g. a setting of a factory
            self.put("free", name)
            try:
                self.value(cell.cell_contents)
            except ValueError:                       # a cell not filled yet
                self.put("empty")
        self.code(f.__code__, f.__globals__)

    def code(self, co: types.CodeType, globals_: Mapping) -> None:
        self.put(co.co_code, co.co_names, co.co_varnames, co.co_freevars, co.co_cellvars, co.co_argcount,
                 co.co_kwonlyargcount, co.co_posonlyargcount, co.co_flags)
        for c in co.co_consts:
            if isinstance(c, types.CodeType):
                self.code(c, globals_)
            else:
                self.value(c)
        for name in co.co_names:                     # a helper of the same module, e.g. one in another cell
            g = globals_.get(name)
            if isinstance(g, (type, types.FunctionType)) and getattr(g, "__module__", None) == self.module:
                self.put("global", name)
                self.value(g)


def code_key(method_cls: type, arch_cls: type) -> dict[str, str]:
    """The ``code`` entry of a run config: ``{"method": fp, "arch": fp}`` for those that are user code
    (empty for the package's own classes, so their run keys stay as they are)."""
    fps = {"method": fingerprint(method_cls), "arch": fingerprint(arch_cls)}
    return {k: v for k, v in fps.items() if v is not None}


def warn_if_changed(kind: str, name: str, old: type | None, new: type) -> None:
    """Warn (once per new version) that ``name`` was registered again with other code than before."""
    if old is None or old is new:
        return
    before, after = fingerprint(old), fingerprint(new)
    if before != after:
        warnings.warn(f"{kind} {name!r} is registered again with different code (fingerprint "
                      f"{before or 'faeval'} -> {after or 'faeval'}): its runs are trained and stored anew, "
                      "and the old code's runs stay in the store", RegisteredAgainWarning, stacklevel=3)
