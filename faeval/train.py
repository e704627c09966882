"""The training loop: one rule, one model, one dataset, a per-epoch history.

``fit`` trains with AdamW (model parameters at ``lr``, the rule's own networks at
``lr_fb``; both with ``weight_decay``), shows a progress bar, and after every epoch
(and once before training, as epoch 0) appends a history record:

* ``epoch``, ``step``, ``train_loss``, ``train_acc`` (running means over the epoch's
  batches, in training mode), ``test_loss``, ``test_acc`` (the whole test split, eval
  mode), ``seconds`` (training time of the epoch; excluded from comparisons);
* the rule's own per-step statistics averaged over the epoch (``penalty``,
  ``bridge_loss``, ...);
* ``diag``: a :class:`~faeval.snapshot.Snapshot` on a fixed eval batch (the first
  ``eval_n`` test samples): per-layer hidden norms, BP-gradient norms, max block
  growth, g_L, direction stability and per-layer Gamma of the rule's credit.

:func:`history_to_json` and :func:`history_from_json` convert a history for the run store.

A ``monitor(epoch, record) -> bool`` (e.g. :class:`faeval.Monitor`) may stop the
run. A non-finite training loss or hidden state ends the run cleanly: the history
so far is kept and ``run.stopped`` says why.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import check_precision
from .diagnostics import drift_record
from .methods import Method, build_method
from .models import LayeredModel
from .snapshot import Snapshot, snapshot

__all__ = ["fit", "Run", "EpochRecord", "EpochTotals", "epoch_loop", "evaluate", "adamw", "AdamW", "fused_kernel_ok",
           "epoch_record", "initial_state", "stop_reason", "non_finite", "progress_bar", "check_fit_args",
           "history_to_json", "history_from_json"]


@dataclass
class Run:
    """A trained (or loaded) run: the model, the rule with its auxiliary state, and the history."""

    model: LayeredModel
    method: Method
    history: list[EpochRecord]
    config: dict = field(default_factory=dict)
    stopped: str | None = None
    path: Path | None = None
    from_cache: bool = False

    @property
    def final(self) -> EpochRecord:
        """The last history record."""
        return self.history[-1]

    @property
    def test_acc(self) -> float:
        return self.final.test_acc

    def summary(self) -> str:
        """One line: method, epochs, accuracy, the final diagnostics."""
        f, d = self.final, self.final.diag
        parts = [f"{self.method.name}", f"epoch {f.epoch}", f"step {f.step}",
                 f"test_acc {f.test_acc:.4f}", f"|h_L| {d.h_L:.3g}",
                 f"max growth {d.max_block_growth:.3g}", f"g_L {d.g_L:.3g}"]
        if d.gamma is not None:
            parts.append("Gamma " + "/".join("none" if math.isnan(g) else f"{g:+.2f}" for g in d.gamma))
        if self.stopped:
            parts.append(f"stopped: {self.stopped}")
        return "  ".join(parts)

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path else ""
        return f"Run({self.summary()}{where})"


@contextlib.contextmanager
def eval_layout(model: torch.nn.Module):
    """Inside, a model whose class sets ``eval_channels_last`` holds its 4-D weights in channels-last layout.

    The weights' own tensors are put back on the way out, so training and the optimiser's state never
    see the copies. The numbers are the same up to float rounding; on a CPU, SmallCNN's epoch record
    runs faster this way (measured in ``benchmarks/README.md``).
    """
    on = getattr(model, "eval_channels_last", False)
    own = [(p, p.data) for p in model.parameters() if p.dim() == 4] if on else []
    try:
        for p, data in own:
            p.data = data.to(memory_format=torch.channels_last)
        yield model
    finally:
        for p, data in own:
            p.data = data


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None
             ) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over (x, y) in eval mode.

    ``batch_size=None`` is 128 on a CPU, where small batches keep a convolution's or attention's
    activations in cache (measured in ``benchmarks/README.md``), and 1024 elsewhere. The sums stay
    on the device until the end: one synchronisation per call. The model runs in :func:`eval_layout`.
    """
    if batch_size is None:
        batch_size = 128 if x.device.type == "cpu" else 1024
    was = model.training
    model.eval()
    try:
        with eval_layout(model):
            loss = torch.zeros((), dtype=torch.float64, device=x.device)
            correct = torch.zeros((), dtype=torch.int64, device=x.device)
            for i in range(0, len(x), batch_size):
                logits = model(x[i:i + batch_size])
                loss += F.cross_entropy(logits, y[i:i + batch_size], reduction="sum").double()
                correct += (logits.argmax(-1) == y[i:i + batch_size]).sum()
    finally:
        model.train(was)
    return float(loss) / len(x), int(correct) / len(x)


def fit(model: LayeredModel, method: Method | str, dataset, epochs: int, seed: int = 0, *, batch_size: int = 128,
        lr: float = 1e-3, weight_decay: float = 0.01, lr_fb: float = 1e-3, eval_n: int = 1280,
        monitor: Callable[[int, Mapping], bool] | None = None, progress: bool = True, check_every: int | None = None,
        config: dict | None = None, precision: str = "float32") -> Run:
    """Train ``model`` with ``method`` (a rule or its registered name) for ``epochs`` epochs.

    Batches follow ``dataset.batches(batch_size, seed, epoch)``; the data move to the
    model's device. Same seed, same inputs: the same history (apart from ``seconds``).
    The step loop never waits for the device: losses are summed where they are computed,
    and the epoch's end is the only point that reads them back (per-epoch diagnostics).
    A non-finite loss is therefore noticed at the end of its epoch; ``check_every=k``
    also checks every k steps, at the cost of one synchronisation each time.
    ``precision="bfloat16"`` runs each training step (the rule's forward, credit and backward) under
    ``torch.autocast`` in bfloat16; parameters, optimiser state, the test evaluation and the
    per-epoch diagnostics stay float32 (the BP reference in half precision underflows: pitfall 3).
    """
    if isinstance(method, str):
        method = build_method(method, model, seed=seed)
    if method.model is not model:
        raise ValueError("the method was built for a different model: build_method(name, model) with this model")
    check_fit_args(epochs, batch_size, lr, lr_fb, weight_decay, eval_n)
    device = next(model.parameters()).device
    low = _autocast_dtype(precision)
    if dataset.x_train.device != device:
        dataset = dataset.to(device)
    x_eval, y_eval = dataset.eval_batch(min(eval_n, dataset.n_test))
    opt = adamw(method.param_groups(lr), lr=lr, weight_decay=weight_decay)
    aux = method.aux_parameters()
    opt_fb = adamw(aux, lr=lr_fb, weight_decay=weight_decay) if aux else None

    history: list[EpochRecord] = []
    stopped = None
    init = initial_state(model)

    def batches(epoch: int):
        model.train()
        return dataset.batches(batch_size, seed=seed, epoch=epoch)

    def one_step(batch) -> tuple[dict, int]:
        x, y = batch
        opt.zero_grad(set_to_none=True)
        if opt_fb is not None:
            opt_fb.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=low, enabled=low is not None):
            stats = method.step(x, y)
        opt.step()
        if opt_fb is not None:
            opt_fb.step()
        method.after_step()
        return stats, len(y)

    def end_epoch(epoch: int, t: EpochTotals) -> bool:
        nonlocal stopped
        bad = non_finite(t.sums)
        rec = epoch_record(model, method, dataset, (x_eval, y_eval), epoch, t.step,
                           {k: float(v) for k, v in t.sums.items()}, t.n_batches, t.n_seen, t.seconds, init)
        bar.set_postfix(loss=f"{rec.train_loss:.3f}", acc=f"{rec.train_acc:.3f}", test_acc=f"{rec.test_acc:.3f}",
                        refresh=False)
        why = t.stop or (f"non-finite {bad} at epoch {epoch}, step {t.step}" if bad else None)
        stopped = stop_reason(rec, epoch, monitor, why)
        history.append(rec)
        return bool(stopped)

    steps_per_epoch = math.ceil(dataset.n_train / batch_size)
    method.start_training(epochs * steps_per_epoch)
    bar = progress_bar(epochs * steps_per_epoch, f"{method.name} {model.arch}", progress)
    try:
        history.append(epoch_record(model, method, dataset, (x_eval, y_eval), 0, 0, {}, 0, 0, 0.0, init))
        if monitor is not None and monitor(0, history[-1]):
            stopped = "monitor stopped the run at epoch 0"
        if not stopped:
            epoch_loop(epochs, batches, one_step, end_epoch, bar=bar, check_every=check_every)
    finally:
        bar.close()
    model.eval()
    return Run(model, method, history, dict(config or {}), stopped)


class AdamW:
    """AdamW with PyTorch's fused kernel and nothing else around it.

    The update is ``torch.optim.AdamW(params, lr, weight_decay=..., fused=True)``'s, bit for bit
    (``tests/test_train_store.py`` asserts it): the same kernel, the same per-parameter step counter,
    state created at a parameter's first gradient. What it leaves out is ``torch.optim``'s
    per-step bookkeeping (hooks, parameter groups, state dicts) and its first-use import of
    ``torch._dynamo`` (seconds in every fresh process, which ``fit_many``'s workers are; measured
    in ``benchmarks/README.md``). One thing it adds: a gradient whose memory layout differs from its parameter's (a
    transposed view, as ``torch.autograd.grad`` can return) is copied into the parameter's
    layout first. The fused kernel reads gradients in the parameter's memory order, and in
    torch 2.13 ``torch.optim.AdamW(fused=True)`` applies such a gradient transposed.

    ``params`` is a list of parameters, or of groups ``{"params": [...], "lr": x}`` as
    ``torch.optim`` takes them (a group without ``"lr"`` uses ``lr``).
    """

    def __init__(self, params, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params, self._lrs = [], []
        for group in param_groups(params, lr):
            self.params += group["params"]
            self._lrs += [float(group["lr"])] * len(group["params"])
        self.lr, self.weight_decay, self.betas, self.eps = float(lr), float(weight_decay), betas, float(eps)
        self._state: list[tuple[torch.Tensor, ...] | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        groups: dict[tuple, tuple[list, ...]] = {}
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if self._state[i] is None:      # exp_avg, exp_avg_sq, step (a float32 tensor, as torch's fused AdamW)
                self._state[i] = (torch.zeros_like(p), torch.zeros_like(p),
                                  torch.zeros((), dtype=torch.float32, device=p.device))
            g = p.grad
            if g.stride() != p.stride():    # the fused kernel reads a gradient in its parameter's memory order
                g = torch.empty_like(p).copy_(g)
            lists = groups.setdefault((p.device, p.dtype, self._lrs[i]), ([], [], [], [], []))
            for lst, t in zip(lists, (p, g, *self._state[i])):
                lst.append(t)
        b1, b2 = self.betas
        for (_, _, lr), (ps, grads, exp_avgs, exp_avg_sqs, steps) in groups.items():
            torch._foreach_add_(steps, 1)
            torch._fused_adamw_(ps, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=lr, beta1=b1,
                                beta2=b2, weight_decay=self.weight_decay, eps=self.eps, maximize=False,
                                grad_scale=None, found_inf=None)


def param_groups(params, lr: float) -> list[dict]:
    """``params`` (parameters, or groups ``{"params", "lr"}``) as a list of groups, each with its ``lr``."""
    params = list(params)
    if params and isinstance(params[0], dict):
        return [{**g, "params": list(g["params"]), "lr": g.get("lr", lr)} for g in params]
    return [{"params": params, "lr": lr}]


def adamw(params, lr: float, weight_decay: float):
    """The optimiser of every training loop here: :class:`AdamW` (torch's fused kernel, called directly).

    ``params``: parameters, or groups ``{"params": [...], "lr": x}`` (:meth:`Method.param_groups`).

    That kernel, ``torch._fused_adamw_``, is private: its signature or behaviour may change in a
    torch release. The first use on a device type therefore checks it against AdamW's update
    written out (``torch.optim.AdamW``'s documented algorithm, in float64) on a tiny tensor
    (:func:`fused_kernel_ok`; the tests compare with ``torch.optim.AdamW`` itself, whose first
    use imports ``torch._dynamo``, seconds in every fresh worker process); where the check fails,
    ``torch.optim.AdamW(fused=True)`` is used, else ``torch.optim.AdamW(foreach=True)``. The
    choice is logged once (logger ``"faeval"``).
    """
    params = param_groups(params, lr)
    first = next((p for g in params for p in g["params"]), None)
    device = first.device if first is not None else torch.device("cpu")
    if fused_kernel_ok(device.type):
        return AdamW(params, lr=lr, weight_decay=weight_decay)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)


_KERNEL_OK: dict[str, bool] = {}


def fused_kernel_ok(device_type: str = "cpu") -> bool:
    """Whether :class:`AdamW`'s direct call of ``torch._fused_adamw_`` works on this torch and device type and
    gives AdamW's update (checked once per process: 3 steps on a 3x4 tensor against :func:`_adamw_reference`)."""
    if device_type not in _KERNEL_OK:
        g = torch.Generator().manual_seed(0)            # a fixed probe, not one of a run's random streams
        init, grads = torch.randn(3, 4, generator=g), [torch.randn(3, 4, generator=g) for _ in range(3)]
        want = _adamw_reference(init.double(), [x.double() for x in grads], lr=0.1, weight_decay=0.01)
        try:
            p = init.clone().to(device_type).requires_grad_()
            opt = AdamW([p], lr=0.1, weight_decay=0.01)
            for grad in grads:
                p.grad = grad.to(device_type)
                opt.step()
            got = p.detach().cpu().double()
            ok = bool(torch.allclose(got, want, rtol=1e-5, atol=1e-6))
            why = "" if ok else f"its update differs from AdamW's by {(got - want).abs().max().item():.3g}"
        except (RuntimeError, TypeError, AttributeError) as e:       # the private op changed or is absent
            ok, why = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        _KERNEL_OK[device_type] = ok
        if not ok:
            logging.getLogger("faeval").warning(
                "AdamW on %s: torch._fused_adamw_ fails its check on torch %s (%s); using torch.optim.AdamW("
                "fused=True), or foreach=True where fused is unavailable", device_type, torch.__version__, why)
    return _KERNEL_OK[device_type]


def _adamw_reference(p: torch.Tensor, grads: list[torch.Tensor], lr: float, weight_decay: float,
                     betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.Tensor:
    """``p`` after one AdamW step per gradient, as ``torch.optim.AdamW`` documents it (decoupled weight decay,
    bias-corrected moments)."""
    b1, b2 = betas
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t, g in enumerate(grads, 1):
        p = p * (1 - lr * weight_decay)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        p = p - lr / (1 - b1 ** t) * m / ((v / (1 - b2 ** t)).sqrt() + eps)
    return p


def _autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a run's ``precision`` (None for float32)."""
    return None if check_precision(precision) == "float32" else getattr(torch, precision)


def check_fit_args(epochs, batch_size, lr, lr_fb, weight_decay, eval_n) -> None:
    """Raise ``ValueError`` naming the first training setting out of range."""
    for name, v, ok, rng in [("epochs", epochs, isinstance(epochs, int) and epochs >= 0, "an integer >= 0"),
                             ("batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1,
                              "an integer >= 1"),
                             ("lr", lr, lr > 0, "> 0"), ("lr_fb", lr_fb, lr_fb > 0, "> 0"),
                             ("weight_decay", weight_decay, weight_decay >= 0, ">= 0"),
                             ("eval_n", eval_n, isinstance(eval_n, int) and eval_n >= 2, "an integer >= 2")]:
        if not ok:
            raise ValueError(f"{name}={v!r}: must be {rng}")


@dataclass(eq=False)
class EpochRecord(Mapping):
    """One record of a run's history (the module docstring lists its fields).

    ``stats`` holds the rule's own per-step statistics averaged over the epoch (``penalty``,
    ``bridge_loss``, ...); ``stopped`` is set on the last record of a run that ended early; ``drift`` is
    every parameter's change from its initial value, ``{"abs": {name: ||theta - theta_0||}, "rel": {name:
    ||theta - theta_0|| / ||theta_0||}}`` (None in runs stored before it was recorded). It also
    reads as the mapping the run store's ``history.json`` holds (``rec["test_acc"]``, ``rec["diag"]``,
    a statistic by its name), for code written against a history of dicts.
    """

    epoch: int
    step: int
    train_loss: float | None
    train_acc: float | None
    test_loss: float
    test_acc: float
    seconds: float
    diag: Snapshot
    stats: dict[str, float] = field(default_factory=dict)
    stopped: str | None = None
    drift: dict[str, dict[str, float]] | None = None

    _FIELDS = ("epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc", "seconds")

    def _items(self) -> dict:
        out = {k: getattr(self, k) for k in self._FIELDS}
        out.update(self.stats)
        out["diag"] = self.diag
        if self.stopped is not None:
            out["stopped"] = self.stopped
        if self.drift is not None:
            out["drift"] = self.drift
        return out

    def __getitem__(self, k: str):
        return self._items()[k]

    def __iter__(self):
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def to_json(self) -> dict:
        """Plain JSON types, in the stored order (the Snapshot as a dict)."""
        return {**self._items(), "diag": self.diag.to_dict()}

    @classmethod
    def from_json(cls, d: Mapping) -> EpochRecord:
        """The inverse of :meth:`to_json` (every key it does not know is one of the rule's statistics)."""
        known = {*cls._FIELDS, "diag", "stopped", "drift"}
        return cls(**{k: d.get(k) for k in cls._FIELDS}, diag=Snapshot.from_dict(d["diag"]),
                   stats={k: v for k, v in d.items() if k not in known}, stopped=d.get("stopped"),
                   drift=d.get("drift"))


@dataclass
class EpochTotals:
    """What one epoch's training steps add up to, for :func:`epoch_loop`'s ``end_epoch``: the step
    statistics summed on the device in float64, batches, samples, seconds, the steps so far, and
    ``stop``: why the epoch ended early (a non-finite statistic caught by ``check_every``), else None."""

    sums: dict[str, torch.Tensor]
    n_batches: int
    n_seen: int
    seconds: float
    step: int
    stop: str | None = None


def epoch_loop(epochs: int, batches: Callable[[int], Iterable], step: Callable[[object], tuple[Mapping, int]],
               end_epoch: Callable[[int, EpochTotals], bool], *, bar, check_every: int | None = None) -> None:
    """The epoch loop that :func:`fit` and :func:`faeval.many.fit_group` share.

    For epochs 1..``epochs``: ``step(batch) -> (stats, n_samples)`` for every batch of
    ``batches(epoch)``, the statistics summed where they are computed (no synchronisation), one
    ``bar`` tick per step; then ``end_epoch(epoch, totals)``, which records the epoch and returns
    True to stop. With ``check_every=k`` the sums are checked every k steps, and a non-finite one
    ends the epoch at once (``totals.stop`` says why).
    """
    n_step = 0
    for epoch in range(1, epochs + 1):
        sums: dict[str, torch.Tensor] = {}
        n_batches = n_seen = 0
        stop = None
        start = time.perf_counter()
        for batch in batches(epoch):
            stats, n = step(batch)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v.detach().double()
            n_batches += 1
            n_seen += n
            n_step += 1
            bar.update(1)
            if check_every and n_batches % check_every == 0:
                bad = non_finite(sums)
                if bad:
                    stop = f"non-finite {bad} at epoch {epoch}, step {n_step}"
                    break
        if end_epoch(epoch, EpochTotals(sums, n_batches, n_seen, time.perf_counter() - start, n_step, stop)):
            return


def initial_state(model) -> dict[str, torch.Tensor]:
    """A copy of every parameter of ``model``, the reference of each epoch record's ``drift``."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def epoch_record(model, method, dataset, eval_xy, epoch: int, step: int, sums: dict, n_batches: int, n_seen: int,
                 seconds: float, init: Mapping[str, torch.Tensor]) -> EpochRecord:
    """One history record: the epoch's running train loss/accuracy (from ``sums``), the whole test
    split's loss/accuracy, the rule's averaged statistics, the diagnostic snapshot on ``eval_xy`` and every
    parameter's drift from ``init`` (:func:`initial_state`)."""
    with eval_layout(model):
        test_loss, test_acc = evaluate(model, dataset.x_test, dataset.y_test)
        snap = snapshot(model, *eval_xy, credit_fn=method.credit)
    sums = dict(sums)
    loss, correct = sums.pop("loss", 0.0), sums.pop("correct", 0)
    return EpochRecord(epoch=epoch, step=step, train_loss=loss / n_batches if n_batches else None,
                       train_acc=correct / n_seen if n_seen else None, test_loss=test_loss, test_acc=test_acc,
                       seconds=seconds, diag=snap,
                       stats={**{k: v / n_batches for k, v in sums.items() if n_batches}, **method.epoch_stats()},
                       drift=drift_record(model, init))


def stop_reason(rec: EpochRecord, epoch: int, monitor: Callable[[int, Mapping], bool] | None,
                stopped: str | None = None) -> str | None:
    """Why a run stops after its epoch record ``rec`` (``None``: it goes on), also written to
    ``rec.stopped``: ``stopped`` (a non-finite training loss), else a non-finite hidden
    state, else the monitor asking to stop."""
    if not stopped and not all(math.isfinite(h) for h in rec.diag.hidden_norms):
        stopped = f"non-finite hidden state at epoch {epoch}"
    if not stopped and monitor is not None and monitor(epoch, rec):
        stopped = f"monitor stopped the run at epoch {epoch}"
    if stopped:
        rec.stopped = stopped
    return stopped


def non_finite(sums: Mapping) -> str | None:
    """The name of the first non-finite step statistic in ``sums`` ("training loss" for ``loss``), else None."""
    for k, v in sums.items():
        if not math.isfinite(float(v)):
            return "training loss" if k == "loss" else k
    return None


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "step", **kw):
    """A tqdm bar (``kw``: more of tqdm's options); none when ``enabled`` is False or ``$FAEVAL_PROGRESS`` is 0
    (as when the book is built)."""
    enabled = enabled and os.environ.get("FAEVAL_PROGRESS", "1") != "0"
    if enabled:
        from tqdm.auto import tqdm
    else:       # tqdm.auto would warn about missing notebook widgets even for a disabled bar
        from tqdm import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, unit=unit, leave=False, dynamic_ncols=True, **kw)


def history_to_json(history: list[EpochRecord]) -> list[dict]:
    """A history as plain JSON types (each record's Snapshot as a dict), for the run store."""
    return [rec.to_json() for rec in history]


def history_from_json(records: list[dict]) -> list[EpochRecord]:
    """The inverse of :func:`history_to_json`."""
    return [EpochRecord.from_json(rec) for rec in records]
