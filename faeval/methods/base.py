"""The learning-rule interface, the registry, and the machinery every local rule shares.

A rule is a small class, registered by name (also from a notebook cell):

>>> import torch, faeval
>>> from faeval.methods import FeedbackRule, LocalRule, register_method
>>> @register_method("half_dfa")
... class HalfDFA(faeval.methods.dfa.DFA):
...     def local_credit(self, states, logits, y, top_grad):   # half of DFA's credit
...         return [a / 2 for a in super().local_credit(states, logits, y, top_grad)]
>>> model = faeval.build_model("resmlp", (8,), 3, seed=0, width=16, depth=2)
>>> rule = faeval.build_method("half_dfa", model, seed=0)
>>> x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
>>> [tuple(a.shape) for a in rule.credit(x, y)]
[(4, 16), (4, 16), (4, 16)]

* ``method.loss(x, y) -> (loss, stats)``: a scalar whose gradient with respect to
  :meth:`Method.parameters` is the rule's update, and the step's statistics. This is
  the one training step: :func:`faeval.train.fit` backpropagates it for one run, and
  :func:`faeval.many.fit_group` vectorises the very same method over a group of runs.
* ``method.step(x, y) -> dict`` fills ``.grad`` of the model parameters the rule
  trains (from :meth:`Method.loss`) and of the rule's own networks
  (:meth:`Method.aux_parameters`, from :meth:`Method.aux_loss`); the trainer owns both
  optimisers and calls :meth:`Method.after_step` after stepping them (EMA targets),
  and :meth:`Method.start_training` once before the first step (the run's length).
* ``method.credit(x, y) -> list[Tensor]``: the credit the rule sends to each hidden
  state h_0..h_L, shaped like the state, on the mean-loss scale (a per-sample
  gradient divided by the batch size, like the BP gradient of a mean loss).
* ``method.aux_state()`` / ``method.load_aux_state(state)``: feedback matrices and
  bridge networks, saved with every checkpoint. A rule built with
  ``init_aux=False`` has none until loaded, and its ``credit`` raises
  :class:`~faeval.errors.MissingAuxStateError`: the BP gradient is never
  substituted.

Conventions shared by all local rules (the book's assumptions page, "Learning rules"):
e_T = (softmax - onehot) / B; block l minimises <f_l(sg h_l), sg a_{l+1}>, the
embedding <h_0, sg a_0>, and out_ln + out_head train on the true cross-entropy.
``head_lr=k`` trains out_head at k times the run's learning rate (default 1; 0 keeps it at
its initialisation, the regime in which the paper's scale failure shows: the book's
assumptions page, "How the output head trains").
``penalty=lambda`` adds lambda * mean_i ||f_l(h_l)_i||^2 for every trained block (and
to BP's loss). ``trainable_blocks=k`` trains only the last k blocks (the depth ladder;
every rule but ``frozen``, which trains none); the embedding and the readout always train.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import grad as func_grad

from ..errors import MissingAuxStateError
from ..models import LayeredModel
from ..names import check_known
from ..seeds import generator
from ..usercode import warn_if_changed

__all__ = ["Method", "LocalRule", "FeedbackRule", "METHODS", "register_method", "InheritedCreditWarning",
           "build_method", "method_hparams",
           "method_class", "UnsupportedArchError", "check_range", "error_signal", "ce_stats"]


class UnsupportedArchError(ValueError):
    """A rule was applied to an architecture it is not defined on."""


METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: make a :class:`Method` subclass available as ``build_method(name, ...)``.

    Re-registering a name replaces the earlier class (so a notebook cell can be re-run); where
    the code changed, a :class:`~faeval.usercode.RegisteredAgainWarning` says so. A rule defined
    outside faeval is keyed in the run store by its code too (:mod:`faeval.usercode`).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a method name must be a non-empty string, got {name!r}")

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register_method({name!r}) decorates a subclass of faeval.methods.Method, "
                            f"not {cls!r}")
        cls.name = name
        _warn_if_credit_inherited(name, cls)
        warn_if_changed("method", name, METHODS.get(name), cls)
        METHODS[name] = cls
        return cls
    return deco


class InheritedCreditWarning(UserWarning):
    """A registered rule changes how it trains but reports the credit of the rule it derives from."""


#: the methods that define the credit a rule reports (Gamma reads it), and those that define how it trains
_CREDIT = ("credit", "local_credit", "credit_from")
_TRAINING = ("loss", "step")


def _warn_if_credit_inherited(name: str, cls: type) -> None:
    """Warn when ``cls`` overrides how it trains (``loss``, ``step``) below a rule that
    defines its credit, but none of the methods that define the credit: its Gamma would read the parent's
    credit (for a subclass of BP, 1.0) whatever the new rule does."""
    trains = [m for m in _TRAINING if m in vars(cls)]
    if not trains or any(m in vars(cls) for m in _CREDIT):
        return
    source = next((k for k in cls.__mro__[1:] if any(m in vars(k) for m in _CREDIT)), None)
    if source is None or source is Method:
        return
    import warnings
    warnings.warn(
        f"method {name!r} ({cls.__name__}) overrides {', '.join(trains)}() but not how its credit is computed: "
        f"it inherits {source.__name__}'s credit, so the protocol's Gamma would measure {source.__name__}'s "
        f"credit (for BP's, 1.0 by construction), not this rule's. Override credit() (or local_credit() for "
        "a LocalRule) to return what the new rule sends to each hidden state.", InheritedCreditWarning,
        stacklevel=3)


def method_hparams(name: str) -> dict[str, object]:
    """The hyperparameters of a registered rule and their defaults."""
    cls = method_class(name)
    out: dict[str, object] = {}
    for klass in cls.__mro__:       # the most derived __init__; its parents' only if it passes **kwargs on
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[2:]
        for p in params:
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                out.setdefault(p.name, p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return out


def method_class(name: str) -> type[Method]:
    """The registered class of rule ``name``; an unknown name raises, listing the valid ones."""
    check_known("method", name, METHODS, " (or register your own with @faeval.register_method; a rule that a "
                "module registers needs that module imported first, e.g. the book's probe rules: "
                "import faeval.book.probe_rules)")
    return METHODS[name]


def build_method(name: str, model: nn.Module, **hparams) -> Method:
    """Build the learning rule ``name`` for ``model``.

    Every rule takes ``seed`` (its random draws), ``penalty``, ``head_lr`` and ``init_aux``, and
    every rule but ``frozen`` takes ``trainable_blocks``; :func:`method_hparams` lists a rule's
    hyperparameters. An unknown hyperparameter or one out of range raises, naming the
    valid ones.
    """
    cls = method_class(name)
    valid = method_hparams(name)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise TypeError(f"method {name!r} got unknown hyperparameter(s) {', '.join(map(repr, unknown))}; "
                        f"valid: {', '.join(sorted(valid))}")
    return cls(model, **hparams)


def check_range(name: str, value, ok: bool, valid: str) -> None:
    """Raise ``ValueError('<name>=<value>: must be <valid>')`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{name}={value!r}: must be {valid}")


def error_signal(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """e_T = softmax(logits) - onehot(y), per sample (not divided by the batch size)."""
    p = logits.detach().softmax(-1)
    return p - torch.zeros_like(p).scatter(-1, y.unsqueeze(-1), 1.0)    # (one_hot checks values: no vmap)


class Method:
    """Base class of every learning rule.

    A subclass implements :meth:`loss` and :meth:`credit` (or derives from
    :class:`LocalRule`), and may override :meth:`check_model` to refuse models it is
    not defined on. ``ungroupable`` says why runs of the rule cannot train as one
    vectorised group (``None``: they can; see :func:`faeval.many.why_not_groupable`).
    """

    name = "method"
    ungroupable: str | None = "it does not declare that it can be grouped (ungroupable = None on its class)"
    #: the hyperparameters that may differ between the runs of one vectorised group
    group_free: tuple[str, ...] = ("penalty",)
    #: constructor arguments that do not change what a run trains, so not part of its key
    not_keyed: tuple[str, ...] = ("seed", "init_aux")
    #: a training step's cost relative to a BP step on the same model (``benchmarks/step_cost.py``)
    relative_cost: float = 1.0

    @classmethod
    def step_cost(cls, hparams: Mapping) -> float:
        """A step's estimated cost relative to BP's, for the scheduler (longest runs first) and the
        progress bar; ``hparams``: the run's keyed hyperparameters."""
        return cls.relative_cost

    def __init__(self, model: nn.Module, *, seed: int = 0, penalty: float = 0.0,
                 trainable_blocks: int | None = None, init_aux: bool = True, head_lr: float = 1.0) -> None:
        if not isinstance(model, LayeredModel):
            raise TypeError(f"learning rules train faeval layered models (faeval.build_model); got "
                            f"{type(model).__name__}. To judge a model of your own, use FAProtocol(..., layers=[...]).")
        self.check_model(model)
        check_range("penalty", penalty, penalty >= 0, ">= 0 (the weight of ||f_l(h_l)||^2)")
        check_range("head_lr", head_lr, isinstance(head_lr, (int, float)) and not isinstance(head_lr, bool)
                    and 0 <= head_lr < float("inf"),
                    "a number >= 0 (out_head's learning rate as a multiple of lr; 0 keeps it at its initialisation)")
        if penalty > 0 and not model.residual:
            raise UnsupportedArchError(f"penalty={penalty}: the penalty is on the residual branch f_l(h_l), and arch "
                                       f"{model.arch!r} has no residual branch")
        L = model.depth
        if trainable_blocks is not None:
            check_range("trainable_blocks", trainable_blocks,
                        isinstance(trainable_blocks, int) and 0 <= trainable_blocks <= L, f"an integer in [0, {L}]")
        self.model = model
        self.seed = int(seed)
        self.penalty = float(penalty)
        self.trainable_blocks = L if trainable_blocks is None else int(trainable_blocks)
        self.init_aux = bool(init_aux)
        self.head_lr = float(head_lr)

    def check_model(self, model: LayeredModel) -> None:
        """Raise :class:`UnsupportedArchError` if the rule is not defined on ``model`` (default: every model)."""

    # -- what trains -------------------------------------------------------------------
    def block_trains(self, l: int) -> bool:
        """Whether block l trains (the last ``trainable_blocks`` blocks do)."""
        return l >= self.model.depth - self.trainable_blocks

    def parameters(self) -> list[nn.Parameter]:
        """Model parameters this rule trains: embedding, trained blocks, out_ln, and out_head unless
        ``head_lr`` is 0."""
        m = self.model
        frozen = {id(p) for l, b in enumerate(m.blocks) if not self.block_trains(l) for p in b.parameters()}
        if self.head_lr == 0:
            frozen.update(id(p) for p in m.out_head.parameters())
        return [p for p in m.parameters() if id(p) not in frozen]

    def param_groups(self, lr: float) -> list[dict]:
        """:meth:`parameters` as optimiser groups ``{"params", "lr"}``: out_head at ``lr * head_lr``,
        the rest at ``lr`` (one group when ``head_lr`` is 1)."""
        head = {id(p) for p in self.model.out_head.parameters()}
        params = self.parameters()
        if self.head_lr == 1:
            return [{"params": params, "lr": lr}]
        groups = [{"params": [p for p in params if id(p) not in head], "lr": lr},
                  {"params": [p for p in params if id(p) in head], "lr": lr * self.head_lr}]
        return [g for g in groups if g["params"]]

    def aux_parameters(self) -> list[nn.Parameter]:
        """Parameters of the rule's own networks (bridges), trained at ``lr_fb``."""
        return []

    def after_step(self) -> None:
        """Called by the trainer after the optimisers stepped (EMA updates)."""

    def epoch_stats(self) -> dict[str, float]:
        """Statistics of the rule's own state, read once per epoch into the history's record (e.g. the
        layer-wise rules' angle between each layer's B and W); by default none."""
        return {}

    def start_training(self, total_steps: int) -> None:
        """Called by the trainer before the first step with the number of steps it will take
        (a schedule reads it, such as Credit Bridge's DFA warm-up); by default nothing."""

    # -- the rule ----------------------------------------------------------------------
    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(surrogate, stats)``: a scalar whose gradient w.r.t. :meth:`parameters` is the update,
        and the step's statistics (``loss``: the mean cross-entropy, ``correct``, ...)."""
        raise NotImplementedError

    def aux_loss(self) -> dict[str, torch.Tensor]:
        """Losses of the rule's own networks from the last :meth:`loss` call (into :meth:`aux_parameters`)."""
        return {}

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training step's gradients: :meth:`loss` into :meth:`parameters`, :meth:`aux_loss` into
        :meth:`aux_parameters`. Returns the step's statistics."""
        loss, stats = self.loss(x, y)
        loss.backward(inputs=self.parameters())
        aux = self.aux_loss()
        if aux:
            sum(aux.values()).backward(inputs=self.aux_parameters())
            stats.update({k: v.detach() for k, v in aux.items()})
        return stats

    def credit(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def group_state(self) -> dict[str, object]:
        """The per-run values :meth:`loss` reads besides the model's parameters (a vectorised group
        stacks them, one per run): the penalty weight, and e.g. feedback matrices."""
        return {"penalty": self.penalty}

    # -- auxiliary state ---------------------------------------------------------------
    def aux_state(self) -> dict:
        """Everything besides the model that the rule needs to reproduce its credit."""
        return {}

    def load_aux_state(self, state: dict) -> None:
        if state:
            raise ValueError(f"method {self.name!r} has no auxiliary state, but got keys {sorted(state)}")

    def _need(self, attr: str, what: str):
        value = getattr(self, attr, None)
        if value is None:
            raise MissingAuxStateError(
                f"method {self.name!r}: its {what} are not loaded (built with init_aux=False). Load them with "
                "method.load_aux_state(checkpoint['aux']) or faeval.store.load_run(path); the BP gradient is "
                "never substituted for a rule's own credit.")
        return value

    @property
    def penalised(self) -> bool:
        """Whether the loss carries the residual penalty (in a vectorised group where the runs' weights
        differ, ``penalty`` is a tensor, one weight per run, and every run computes the term)."""
        return torch.is_tensor(self.penalty) or self.penalty > 0

    def _penalty_term(self, branches: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
        """lambda * sum_l mean_i ||f_l(h_l)_i||^2 over the trained blocks' branches (None without a penalty)."""
        if not self.penalised:
            return None
        terms = [f.flatten(1).pow(2).sum(1).mean() for f in branches if f is not None]
        return self.penalty * torch.stack(terms).sum() if terms else None

    def __repr__(self) -> str:
        head = f", head_lr={self.head_lr:g}" if self.head_lr != 1 else ""
        return (f"{type(self).__name__}(name={self.name!r}, arch={self.model.arch!r}, penalty={self.penalty}, "
                f"trainable_blocks={self.trainable_blocks}/{self.model.depth}{head})")


def ce_stats(ce: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The statistics every training step reports: the mean cross-entropy and the number correct."""
    return {"loss": ce.detach(), "correct": (logits.argmax(-1) == y).sum()}


class LocalRule(Method):
    """A rule that trains each block on its own local loss <f_l, sg a_{l+1}> (DFA, FA, EP, bridges).

    Subclasses implement :meth:`local_credit`. Block inputs are detached, so no
    gradient crosses a block boundary; the readout trains on the true loss.
    """

    #: whether local_credit needs d CE / d h_L
    needs_top_grad = False

    def local_credit(self, states: list[torch.Tensor], logits: torch.Tensor, y: torch.Tensor,
                     top_grad: torch.Tensor | None) -> list[torch.Tensor]:
        """Credit for h_0..h_L from detached states, the logits and (if asked for) dCE/dh_L."""
        raise NotImplementedError

    def step_stats(self) -> dict[str, torch.Tensor]:
        """Extra per-step statistics of the last :meth:`local_credit` call (averaged into the history)."""
        return {}

    def training_credit(self, credit: list[torch.Tensor]) -> list[torch.Tensor]:
        """The credit each part trains on: entry 0 for the embedding, entry l+1 for block l (by
        default the credit at the block's output, a_{l+1}). Gamma always reads :meth:`credit`."""
        return credit

    def _forward(self, x: torch.Tensor):
        """Forward with every block's input detached: (h0 with graph, detached states, branches)."""
        m = self.model
        h0 = m.embed(x)
        states, branches = [h0.detach()], []
        h = states[0]
        for l in range(m.depth):
            if self.block_trains(l):
                out = m.blocks[l](h)
                branches.append(out)
                out = out.detach()
            else:
                with torch.no_grad():
                    out = m.blocks[l](h)
                branches.append(None)
            h = h + out if m.residual else out
            states.append(h)
        return h0, states, branches

    def _top_grad(self, h_L: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """d CE(readout(h_L), y) / d h_L when the rule asks for it (``torch.func.grad``, so that the
        same code runs inside a vectorised group)."""
        if not self.needs_top_grad:
            return None
        return func_grad(lambda h: F.cross_entropy(self.model.readout(h), y))(h_L.detach())

    def loss(self, x, y):
        h0, states, branches = self._forward(x)
        states = [s.detach() for s in states]
        logits = self.model.readout(states[-1])
        ce = F.cross_entropy(logits, y)
        credit = [a.detach() for a in self.local_credit(states, logits.detach(), y, self._top_grad(states[-1], y))]
        credit = self.training_credit(credit)
        stats = ce_stats(ce, logits, y)
        # d<f_l, sg a>/df_l = a: the surrogate's gradient seeds each branch with its credit (and h_0 with a_0)
        loss = ce + (h0 * credit[0]).sum()
        for l, f in enumerate(branches):
            if f is not None:
                loss = loss + (f * credit[l + 1]).sum()
        pen = self._penalty_term(branches)
        if pen is not None:
            loss = loss + pen
            stats["penalty"] = pen.detach()
        stats.update(self.step_stats())
        return loss, stats

    def credit(self, x, y):
        m = self.model
        was = m.training
        m.eval()
        try:
            with torch.no_grad():
                states, logits = m.states(x)
            with torch.enable_grad():
                credit = self.local_credit([s.detach() for s in states], logits.detach(), y,
                                           self._top_grad(states[-1], y))
            return [a.detach() for a in credit]
        finally:
            m.train(was)


def gaussian_matrices(shapes: Sequence[tuple[int, ...]], std: float, device, generator: torch.Generator
                      ) -> list[torch.Tensor]:
    """Random matrices with i.i.d. N(0, std^2) entries, drawn on the CPU from ``generator`` (device-independent)."""
    return [(torch.randn(s, generator=generator) * std).to(device) for s in shapes]


def state_shapes(model: LayeredModel) -> list[tuple[int, ...]]:
    """Per-sample shapes of h_0..h_L (from one probe forward pass on zeros)."""
    p = next(model.parameters())
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise TypeError("the model does not record its input_shape; build it with faeval.build_model")
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            hs, _ = model.states(torch.zeros((2, *shape), device=p.device, dtype=p.dtype))
    finally:
        model.train(was)
    return [tuple(h.shape[1:]) for h in hs]


def load_tensors(method: Method, state: dict, key: str, expect: Sequence[tuple[int, ...]], what: str):
    """Read a list of tensors from an aux state, checking it exists and has the expected shapes."""
    if not state or key not in state:
        raise MissingAuxStateError(f"method {method.name!r}: the auxiliary state has no {key!r} ({what}); "
                                   "was it saved by this rule?")
    ts = list(state[key])
    got = [tuple(t.shape) for t in ts]
    if got != [tuple(s) for s in expect]:
        raise ValueError(f"method {method.name!r}: saved {what} have shapes {got}, but this model needs {list(expect)}")
    p = next(method.model.parameters())
    return [t.to(device=p.device, dtype=p.dtype) for t in ts]


class FeedbackRule(LocalRule):
    """A local rule whose credit comes from fixed random feedback matrices, saved with the run.

    Subclasses give :meth:`feedback_shapes`, ``feedback_std`` and :meth:`credit_from`,
    and call :meth:`_init_feedback` at the end of ``__init__``.
    """

    feedback_std: float = 1.0
    feedback: list[torch.Tensor] | None = None
    ungroupable = None

    def feedback_shapes(self) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def credit_from(self, feedback, states, logits, y, top_grad) -> list[torch.Tensor]:
        raise NotImplementedError

    def _init_feedback(self) -> None:
        self.feedback = self.draw_feedback(generator(self.seed, "feedback")) if self.init_aux else None

    def draw_feedback(self, generator: torch.Generator) -> list[torch.Tensor]:
        """A set of feedback matrices drawn from ``generator`` (fresh draws give the null calibration)."""
        p = next(self.model.parameters())
        mats = gaussian_matrices(self.feedback_shapes(), self.feedback_std, p.device, generator)
        return [B.to(p.dtype) for B in mats]

    def local_credit(self, states, logits, y, top_grad):
        return self.credit_from(self._need("feedback", "feedback matrices B_l"), states, logits, y, top_grad)

    def group_state(self):
        return {**super().group_state(), "feedback": self._need("feedback", "feedback matrices B_l")}

    def credit(self, x, y, feedback: list[torch.Tensor] | None = None):
        """The credit for (x, y); with ``feedback``, the credit those matrices would send instead."""
        if feedback is None:
            return super().credit(x, y)
        saved, self.feedback = self.feedback, list(feedback)
        try:
            return super().credit(x, y)
        finally:
            self.feedback = saved

    def aux_state(self):
        return {"feedback": [B.detach().cpu() for B in self._need("feedback", "feedback matrices B_l")]}

    def load_aux_state(self, state):
        self.feedback = load_tensors(self, state, "feedback", self.feedback_shapes(), "feedback matrices B_l")
