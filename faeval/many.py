"""Many runs as one: train runs that differ only in seed or in a scalar hyperparameter together.

``fit_group`` stacks the parameters of R models of one architecture
(``torch.func.stack_module_state``) and takes every training step of all R runs as one
vectorised forward (``torch.func.vmap``) and one backward. Each run keeps its own
initialisation, data order, feedback matrices, penalty weight and AdamW state, so the
result matches the same runs trained one by one with :func:`faeval.train.fit`, up to
floating-point rounding (``tests/test_many.py`` asserts it). Per-epoch records are
computed per run, exactly as ``fit`` computes them.

What can be grouped (:func:`why_not_groupable` says why not, in words):

* rules: BP, the frozen-blocks baseline and the feedback rules without networks of
  their own (DFA, FA, and rules derived from them, e.g. a rule defined in a notebook
  by subclassing DFA). EP relaxes its states with an inner loop and the bridges train
  networks of their own: they train one by one;
* architectures: ResMLP and StudentNet (SmallCNN's BatchNorm updates running
  statistics in place; ViT-Mini is not grouped yet);
* within a group: the same architecture and model options, dataset shapes, number of
  batches per epoch, rule class, trainable blocks, learning rates and weight decay.
  Seeds, penalty weights and seeded data (label noise, subsets) may differ.

A group larger than the device's memory allows is split in halves and retried (the
reason is logged); :func:`faeval.store.fit_many` trains what cannot be grouped one by
one, logging why.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from .methods import Method
from .methods.base import FeedbackRule, LocalRule
from .methods.bp import BP
from .train import Run, _non_finite, _progress, adamw, check_fit_args, epoch_record, stop_reason

__all__ = ["fit_group", "why_not_groupable", "GROUPABLE_ARCHS"]

log = logging.getLogger("faeval")
GROUPABLE_ARCHS = ("resmlp", "studentnet")


def why_not_groupable(method: Method) -> str | None:
    """None when ``method`` (on its model) can train in a vectorised group, else the reason."""
    arch = method.model.arch
    if arch not in GROUPABLE_ARCHS:
        return f"arch {arch!r} is not grouped (only {', '.join(GROUPABLE_ARCHS)})"
    if isinstance(method, BP):
        return None
    if isinstance(method, FeedbackRule) and not method.aux_parameters():
        if type(method).extra_loss is not LocalRule.extra_loss or type(method).step is not LocalRule.step:
            return f"method {method.name!r} changes the local step"
        return None
    return (f"method {method.name!r} is neither BP nor a feedback rule without networks of its own "
            "(EP relaxes states in an inner loop; bridges train their own networks)")


class _Step(nn.Module):
    """The step of one run as a scalar surrogate whose gradient is the rule's update.

    For BP: the mean cross-entropy plus the penalty. For a local rule: the readout's
    cross-entropy on the detached top state, plus <h_0, sg a_0> and <f_l, sg a_{l+1}>
    for every trained block, plus the penalty: its gradient is exactly what
    ``LocalRule.step`` seeds backward with.
    """

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.model = method.model
        self.method = method

    def forward(self, x, y, feedback, penalty):
        m, rule = self.model, self.method
        if isinstance(rule, BP):
            hs, logits = m.states(x)
            ce = F.cross_entropy(logits, y)
            branches = [hs[l + 1] - hs[l] if rule.block_trains(l) else None for l in range(m.depth)]
            loss = ce
        else:
            h0, states, branches = rule._forward(x)
            logits = m.readout(states[-1])
            ce = F.cross_entropy(logits, y)
            top = None
            if rule.needs_top_grad:
                top = grad(lambda h: F.cross_entropy(m.readout(h), y))(states[-1])
            credit = rule.credit_from(feedback, states, logits.detach(), y, top)
            credit = [a.detach() for a in credit]
            loss = ce + (h0 * credit[0]).sum()
            for l, f in enumerate(branches):
                if f is not None:
                    loss = loss + (f * credit[l + 1]).sum()
        terms = [f.flatten(1).pow(2).sum(1).mean() for f in branches if f is not None]
        pen = penalty * torch.stack(terms).sum() if terms else torch.zeros_like(penalty)
        loss = loss + pen
        return loss, (ce.detach(), (logits.argmax(-1) == y).sum(), pen.detach())


def _trainable_names(method: Method) -> list[str]:
    ids = {id(p) for p in method.parameters()}
    return [n for n, p in method.model.named_parameters() if id(p) in ids]


def _check_group(methods: Sequence[Method], datasets, batch_size: int) -> None:
    first = methods[0]
    for m in methods:
        why = why_not_groupable(m)
        if why:
            raise ValueError(f"cannot group: {why}")
    for m, ds in zip(methods, datasets):
        same = (type(m) is type(first) and m.model.arch == first.model.arch
                and [tuple(p.shape) for p in m.model.parameters()] == [tuple(p.shape) for p in first.model.parameters()]
                and m.trainable_blocks == first.trainable_blocks
                and ds.input_shape == datasets[0].input_shape
                and math.ceil(ds.n_train / batch_size) == math.ceil(datasets[0].n_train / batch_size)
                and len(ds.x_train) % batch_size == len(datasets[0].x_train) % batch_size)
        if not same:
            raise ValueError(f"cannot group: run {m!r} on {ds.name!r} differs from {first!r} in rule, architecture, "
                             "shapes, trainable blocks or batches per epoch")


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
    monitors = list(monitors or [None] * R)
    configs = list(configs or [{}] * R)

    names = _trainable_names(methods[0])
    params, buffers = stack_module_state(list(models))
    train_p = {n: params[n].detach().clone() for n in names}
    fixed = {n: params[n].detach() for n in params if n not in names}
    fixed.update({n: b.detach() for n, b in buffers.items()})
    prefixed = lambda d: {f"model.{n}": t for n, t in d.items()}  # noqa: E731
    feedback = None
    if isinstance(methods[0], FeedbackRule):
        feedback = [torch.stack([m._need("feedback", "feedback matrices")[i] for m in methods])
                    for i in range(len(methods[0].feedback))]
    penalty = torch.tensor([m.penalty for m in methods], device=device, dtype=train_p[names[0]].dtype)
    step_module = _Step(methods[0])

    def one(tp, fx, x, y, fb, pen):
        return functional_call(step_module, (prefixed(tp), prefixed(fx)), (x, y, fb, pen), strict=False)

    # The forward of all R runs is vectorised; the gradient is ordinary autograd of the summed
    # surrogates (each run's parameters only reach its own loss). This costs about 20% less
    # per step than vmap(grad(...)) on this project's CPU (3 runs of a tiny ResMLP: 4.1 instead
    # of 5.2 ms per step), which is what matters where a step is overhead, as on a GPU.
    vectorised = vmap(one, in_dims=(0, 0, 0, 0, 0 if feedback is not None else None, 0))
    trained = list(train_p.values())
    for p in trained:
        p.requires_grad_(True)
    opt = adamw(trained, lr=lr, weight_decay=weight_decay)

    evals = [ds.eval_batch(min(eval_n, ds.n_test)) for ds in datasets]
    histories: list[list[dict]] = [[] for _ in range(R)]
    stopped: list[str | None] = [None] * R
    step = 0

    def sync_back():
        with torch.no_grad():
            for r, model in enumerate(models):
                own = dict(model.named_parameters())
                for n in names:
                    own[n].copy_(train_p[n][r])

    def records(epoch, sums, n_batches, n_seen, seconds):
        for r in range(R):
            if stopped[r]:
                continue
            s = {k: float(v[r]) for k, v in sums.items()}
            if "penalty" in s and methods[r].penalty == 0:
                s.pop("penalty")
            rec = epoch_record(models[r], methods[r], datasets[r], evals[r], epoch, step, s, n_batches, n_seen,
                               seconds)
            bad = _non_finite(s)
            stopped[r] = stop_reason(rec, epoch, monitors[r], bad and f"non-finite {bad} at epoch {epoch}, step {step}")
            histories[r].append(rec)

    steps_per_epoch = math.ceil(datasets[0].n_train / batch_size)
    bar = _progress(epochs * steps_per_epoch, f"{methods[0].name} x{R} {models[0].arch}", progress)
    try:
        records(0, {}, 0, 0, 0.0)
        for epoch in range(1, epochs + 1):
            if all(stopped):
                break
            for model in models:
                model.train()
            sums: dict[str, torch.Tensor] = {}
            n_batches = n_seen = 0
            start = time.perf_counter()
            iters = [ds.batches(batch_size, seed=s, epoch=epoch) for ds, s in zip(datasets, seeds)]
            for batch in zip(*iters):
                x = torch.stack([b[0] for b in batch])
                y = torch.stack([b[1] for b in batch])
                opt.zero_grad()
                losses, (ce, correct, pen) = vectorised(train_p, fixed, x, y, feedback, penalty)
                losses.sum().backward(inputs=trained)
                opt.step()
                for k, v in (("loss", ce), ("correct", correct), ("penalty", pen)):
                    sums[k] = sums.get(k, 0.0) + v.detach().double()
                n_batches += 1
                n_seen += y.shape[1]
                step += 1
                bar.update(1)
            seconds = (time.perf_counter() - start) / R
            sync_back()
            records(epoch, sums, n_batches, n_seen, seconds)
            bar.set_postfix(loss=f"{float(sums['loss'].mean()) / n_batches:.3f}", refresh=False)
    finally:
        bar.close()
    sync_back()
    for model in models:
        model.eval()
    return [Run(models[r], methods[r], histories[r], dict(configs[r]), stopped[r]) for r in range(R)]


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


def group_runs(keys: Mapping[int, str | None]) -> list[list[int]]:
    """Indices grouped by key, in first-seen order; a ``None`` key is a group of its own."""
    groups: dict[str, list[int]] = {}
    out: list[list[int]] = []
    for i, k in keys.items():
        if k is None:
            out.append([i])
        elif k in groups:
            groups[k].append(i)
        else:
            groups[k] = [i]
            out.append(groups[k])
    return out
