"""Many runs as one: train runs that differ only in seed or in a scalar hyperparameter together.

``fit_group`` stacks the parameters of R models of one architecture
(``torch.func.stack_module_state``) and takes every training step of all R runs as one
vectorised call (``torch.func.vmap``) of the rule's own :meth:`~faeval.methods.Method.loss`,
the same method that :func:`faeval.train.fit` backpropagates for one run, and one
backward. Each run keeps its own initialisation, data order, per-run rule state
(:meth:`~faeval.methods.Method.group_state`: penalty weight, feedback matrices) and
AdamW state, so the result matches the same runs trained one by one, up to
floating-point rounding (``tests/test_many.py`` asserts it). Per-epoch records are
computed per run, exactly as ``fit`` computes them.

:func:`why_not_groupable` says, in words, why a rule on its model cannot be grouped:

* the architecture's class does not set ``groupable = True`` (SmallCNN's BatchNorm
  updates running statistics in place);
* the rule's class gives a reason in ``ungroupable`` (EP relaxes its states with an
  inner autograd loop; the bridges train networks of their own; a rule that does not
  say it can be grouped is not);
* the rule overrides ``step``, ``after_step`` or ``start_training``, which the
  vectorised step does not run (it runs ``loss`` only), or has parameters of its own.

Within a group: the same architecture and model options, dataset shapes, number of
batches per epoch, rule class, trainable blocks, learning rates (``head_lr`` included) and weight decay.
Seeds, penalty weights and seeded data (label noise, subsets) may differ. A group
larger than the device's memory allows is split in halves and retried (the reason
is logged); :func:`faeval.schedule.fit_many` trains what cannot be grouped one by
one, logging why.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .methods import Method
from .train import (
    EpochRecord,
    EpochTotals,
    Run,
    adamw,
    check_fit_args,
    epoch_loop,
    epoch_record,
    initial_state,
    non_finite,
    progress_bar,
    stop_reason,
)

__all__ = ["fit_group", "fit_group_splitting", "why_not_groupable"]

log = logging.getLogger("faeval")


def why_not_groupable(method: Method) -> str | None:
    """None when ``method`` (on its model) can train in a vectorised group, else the reason."""
    model, cls = method.model, type(method)
    if not type(model).groupable:
        return (f"arch {model.arch!r} is not groupable ({type(model).__name__}.groupable is False: e.g. its forward "
                "updates buffers in place)")
    if cls.ungroupable:
        return f"method {method.name!r}: {cls.ungroupable}"
    for hook in ("step", "after_step", "start_training"):
        if getattr(cls, hook) is not getattr(Method, hook):
            return f"method {method.name!r} overrides {hook}(), which the vectorised step does not run"
    if method.aux_parameters():
        return f"method {method.name!r} trains parameters of its own"
    return None


class _Step(nn.Module):
    """One run's step as a module, so that ``functional_call`` can swap in its parameters and
    ``vmap`` can map it over the group: sets the run's :meth:`~Method.group_state`, calls the
    rule's own :meth:`~Method.loss`, restores the state."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.model = method.model
        self.method = method

    def forward(self, x, y, state):
        saved = {k: getattr(self.method, k) for k in state}
        try:
            for k, v in state.items():
                setattr(self.method, k, v)
            loss, stats = self.method.loss(x, y)
        finally:
            for k, v in saved.items():
                setattr(self.method, k, v)
        return loss, {k: v.detach() for k, v in stats.items()}


def _stack_state(methods: Sequence[Method]) -> tuple[dict, dict]:
    """The group's per-run rule state: values shared by every run stay as they are (``shared``), the
    rest are stacked along a new first dimension (``batched``; a list of tensors stacks entry by entry)."""
    states = [m.group_state() for m in methods]
    shared, batched = {}, {}
    for k, v0 in states[0].items():
        vals = [s[k] for s in states]
        if isinstance(v0, float) and all(v == v0 for v in vals):
            shared[k] = v0
        elif isinstance(v0, (list, tuple)):
            batched[k] = [torch.stack([v[i] for v in vals]) for i in range(len(v0))]
        else:
            p = next(methods[0].model.parameters())
            batched[k] = torch.stack([torch.as_tensor(v, dtype=p.dtype, device=p.device) for v in vals])
    return shared, batched


def _trainable_names(method: Method) -> list[str]:
    ids = {id(p) for p in method.parameters()}
    return [n for n, p in method.model.named_parameters() if id(p) in ids]


def _stacked_groups(method: Method, stacked: dict[str, torch.Tensor], lr: float) -> list[dict]:
    """The rule's optimiser groups (:meth:`~Method.param_groups`: out_head at ``lr * head_lr``) over the
    group's stacked parameters, matched by name."""
    name = {id(p): n for n, p in method.model.named_parameters()}
    return [{"params": [stacked[name[id(p)]] for p in g["params"]], "lr": g["lr"]} for g in method.param_groups(lr)]


def _per_run_state(method: Method) -> dict:
    """The rule's tensors (and lists of tensors, and generators) besides its model: the state its
    :meth:`~Method.loss` might read, which a group must stack or refuse."""
    def stateful(v):
        return (torch.is_tensor(v) or isinstance(v, torch.Generator)
                or (isinstance(v, (list, tuple)) and v and all(torch.is_tensor(t) for t in v)))
    return {k: v for k, v in vars(method).items() if k != "model" and stateful(v)}


def _same(a, b) -> bool:
    if isinstance(a, torch.Generator):
        return a is b
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))


def _check_group(methods: Sequence[Method], datasets, batch_size: int) -> None:
    first = methods[0]
    for m in methods:
        why = why_not_groupable(m)
        if why:
            raise ValueError(f"cannot group: {why}")
    listed = set(first.group_state())
    own = _per_run_state(first)
    for m in methods[1:]:
        other = _per_run_state(m)
        differ = sorted(k for k in own if k not in listed and (k not in other or not _same(own[k], other[k])))
        if differ:      # the vectorised step would read run 0's value for every run
            raise ValueError(f"cannot group: method {first.name!r} holds per-run state {differ} that its "
                             "group_state() does not list; add it there, or set `ungroupable` on its class")
    for m, ds in zip(methods, datasets):
        same = (type(m) is type(first) and m.model.arch == first.model.arch
                and [tuple(p.shape) for p in m.model.parameters()] == [tuple(p.shape) for p in first.model.parameters()]
                and m.trainable_blocks == first.trainable_blocks and m.head_lr == first.head_lr
                and ds.input_shape == datasets[0].input_shape
                and math.ceil(ds.n_train / batch_size) == math.ceil(datasets[0].n_train / batch_size)
                and len(ds.x_train) % batch_size == len(datasets[0].x_train) % batch_size)
        if not same:
            raise ValueError(f"cannot group: run {m!r} on {ds.name!r} differs from {first!r} in rule, architecture, "
                             "shapes, trainable blocks, head_lr or batches per epoch")


def fit_group(models: Sequence[nn.Module], methods: Sequence[Method], datasets: Sequence, epochs: int,
              seeds: Sequence[int], *, batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.01,
              eval_n: int = 1280, monitors: Sequence[Callable | None] | None = None, progress: bool = True,
              configs: Sequence[dict] | None = None) -> list[Run]:
    """Train R runs as one vectorised model; returns one :class:`Run` per input, in order.

    ``models[r]`` is trained by ``methods[r]`` on ``datasets[r]`` with data order
    ``seeds[r]``, as ``fit(models[r], methods[r], datasets[r], epochs, seeds[r], ...)``
    would. Each record's ``seconds`` is the group's epoch time divided by R.
    """
    R = len(models)
    if not (R == len(methods) == len(datasets) == len(seeds)) or R == 0:
        raise ValueError("fit_group needs one model, method, dataset and seed per run (and at least one run)")
    check_fit_args(epochs, batch_size, lr, 1e-3, weight_decay, eval_n)
    for model, method in zip(models, methods):
        if method.model is not model:
            raise ValueError("each method must be built for its own model (build_method(name, model))")
    device = next(models[0].parameters()).device
    datasets = [ds if ds.x_train.device == device else ds.to(device) for ds in datasets]
    _check_group(methods, datasets, batch_size)
    group = _Group(models, methods, datasets, seeds, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                   eval_n=eval_n, monitors=monitors)
    steps_per_epoch = math.ceil(datasets[0].n_train / batch_size)
    bar = group.bar = progress_bar(epochs * steps_per_epoch, f"{methods[0].name} x{R} {models[0].arch}", progress)
    try:
        group.record(0, EpochTotals({}, 0, 0, 0.0, 0))
        if not all(group.stopped):
            epoch_loop(epochs, group.batches, group.step, group.end_epoch, bar=bar)
    finally:
        bar.close()
    group.sync_back()
    for model in models:
        model.eval()
    configs = list(configs or [{}] * R)
    return [Run(models[r], methods[r], group.histories[r], dict(configs[r]), group.stopped[r]) for r in range(R)]


class _Group:
    """R runs training as one vectorised model: their stacked parameters, the vectorised step, the optimiser
    and each run's history, with the three calls :func:`~faeval.train.epoch_loop` makes (:meth:`batches`,
    :meth:`step`, :meth:`end_epoch`), as :func:`~faeval.train.fit` gives them for one run."""

    def __init__(self, models, methods, datasets, seeds, *, batch_size: int, lr: float, weight_decay: float,
                 eval_n: int, monitors) -> None:
        self.models, self.methods, self.datasets, self.seeds = list(models), list(methods), list(datasets), seeds
        self.batch_size, self.R = batch_size, len(models)
        self.bar = None             # fit_group's progress bar (end_epoch shows the loss on it)
        self.monitors = list(monitors or [None] * self.R)
        self.names = _trainable_names(methods[0])
        self.init = [initial_state(m) for m in self.models]
        params, buffers = stack_module_state(self.models)
        self.train_p = {n: params[n].detach().clone() for n in self.names}
        self.fixed = {n: params[n].detach() for n in params if n not in self.names}
        self.fixed.update({n: b.detach() for n, b in buffers.items()})
        self.shared, self.batched = _stack_state(methods)
        self.step_module = _Step(methods[0])
        # The forward of all R runs is vectorised; the gradient is ordinary autograd of the summed
        # surrogates (each run's parameters only reach its own loss), which costs less per step than
        # vmap(grad(...)) (benchmarks/README.md).
        self.vectorised = vmap(partial(_one_run, self.step_module, self.shared), in_dims=(0, 0, 0, 0, 0))
        self.trained = list(self.train_p.values())
        for p in self.trained:
            p.requires_grad_(True)
        self.opt = adamw(_stacked_groups(methods[0], self.train_p, lr), lr=lr, weight_decay=weight_decay)
        self.evals = [ds.eval_batch(min(eval_n, ds.n_test)) for ds in datasets]
        self.histories: list[list[EpochRecord]] = [[] for _ in range(self.R)]
        self.stopped: list[str | None] = [None] * self.R
        self.first_step = True

    def batches(self, epoch: int):
        for model in self.models:
            model.train()
        return zip(*[ds.batches(self.batch_size, seed=s, epoch=epoch) for ds, s in zip(self.datasets, self.seeds)])

    def step(self, batch) -> tuple[dict, int]:
        x = torch.stack([b[0] for b in batch])
        y = torch.stack([b[1] for b in batch])
        self.opt.zero_grad()
        try:
            losses, stats = self.vectorised(self.train_p, self.fixed, x, y, self.batched)
        except RuntimeError as err:
            if not self.first_step or _is_oom(err):       # an OOM splits the group (fit_group_splitting)
                raise
            raise ValueError(f"method {self.methods[0].name!r} cannot train in a vectorised group: {err}. "
                             "Set `ungroupable = '<why>'` on its class, or pass group=False") from err
        self.first_step = False
        losses.sum().backward(inputs=self.trained)
        self.opt.step()
        return stats, y.shape[1]

    def end_epoch(self, epoch: int, t: EpochTotals) -> bool:
        self.sync_back()
        self.record(epoch, t)
        self.bar.set_postfix(loss=f"{float(t.sums['loss'].mean()) / t.n_batches:.3f}", refresh=False)
        return all(self.stopped)

    def record(self, epoch: int, t: EpochTotals) -> None:
        """Append each running run's record of ``epoch`` (its share of the group's time), and see whether it stops."""
        for r in range(self.R):
            if self.stopped[r]:
                continue
            s = {k: float(v[r]) for k, v in t.sums.items()}
            if "penalty" in s and not self.methods[r].penalised:
                s.pop("penalty")
            rec = epoch_record(self.models[r], self.methods[r], self.datasets[r], self.evals[r], epoch, t.step, s,
                               t.n_batches, t.n_seen, t.seconds / self.R, self.init[r])
            bad = non_finite(s)
            self.stopped[r] = stop_reason(rec, epoch, self.monitors[r],
                                          bad and f"non-finite {bad} at epoch {epoch}, step {t.step}")
            self.histories[r].append(rec)

    def sync_back(self) -> None:
        """Copy each run's slice of the stacked parameters into its own model."""
        with torch.no_grad():
            for r, model in enumerate(self.models):
                own = dict(model.named_parameters())
                for n in self.names:
                    own[n].copy_(self.train_p[n][r])


def _one_run(step_module: _Step, shared: dict, tp, fx, x, y, state):
    """One run's loss and statistics, with its parameters ``tp`` (trained) and ``fx`` (fixed, buffers): the
    function ``vmap`` maps over the group (a function of its own, so that the group holds no reference cycle and
    its stacked tensors go when it does)."""
    prefixed = ({f"model.{n}": t for n, t in d.items()} for d in (tp, fx))
    return functional_call(step_module, tuple(prefixed), (x, y, {**shared, **state}), strict=False)


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def fit_group_splitting(build: Callable[[Sequence[int]], tuple], idx: Sequence[int], train: Callable,
                        ) -> dict[int, Run]:
    """Train runs ``idx`` as one group; on running out of memory, split the group in halves and retry.

    ``build(idx)`` returns fresh (models, methods, datasets, seeds, configs) for those runs;
    ``train(models, methods, datasets, seeds, configs)`` trains them (``fit_group``).
    """
    try:
        models, methods, datasets, seeds, configs = build(idx)
        runs = train(models, methods, datasets, seeds, configs)
        return dict(zip(idx, runs))
    except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
        if not _is_oom(err) or len(idx) == 1:
            raise
        half = len(idx) // 2
        log.warning("out of memory training a group of %d runs together; splitting it into %d + %d and retrying",
                    len(idx), half, len(idx) - half)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {**fit_group_splitting(build, idx[:half], train), **fit_group_splitting(build, idx[half:], train)}
