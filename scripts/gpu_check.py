"""The GPU check: one command that proves faeval on an accelerator, inside a time budget.

From the repository root, without installing faeval (PyTorch, numpy, pandas, matplotlib, seaborn, tqdm and
cloudpickle must be importable; papermill, Jupyter and Dask are not needed)::

    make gpu-check-prepare                                   # data and the CPU claims into .gpu_check/
    PYTHONPATH=. python3 scripts/gpu_check.py --out DIR      # on the GPU machine

It checks, in this order, and writes ``DIR/report.json`` and ``DIR/summary.md`` after every step, so
that a run cut off still leaves what it measured:

1. ``steps``: every registered rule takes a training step on every architecture where it is defined,
   with a finite loss, finite credit and a finite snapshot;
2. ``group``: a vectorised group (``fit_many``, seeds x penalties) equals the same runs trained one by
   one, to float tolerance, and how much faster it is;
3. ``paper_cost``: steps per second of one run and of a vectorised group at the paper's sizes on
   CIFAR-shaped random data, and the projected hours of the paper profile's runs, beside the paper's
   own count (its artifact's README: 125 runs in about 12 hours on one A100);
4. ``audit``: the audit chapter's notebook executed as the book executes it (its runs trained on the
   device), its wall time, and every claim's status against a CPU build's claims file (``--cpu-claims``);
5. ``bfloat16``: the audit's seed-42 runs of the rules the CPU check allows in bfloat16
   (:data:`BF16_RULES`), the speed-up of their step and how far each number the claims read moves
   against float32, measured against the float32 runs' seed spread.

Every step checks the time left first; at ``--budget`` seconds (default 420) the run stops where it
is. Exit status: 0 every check passed, 1 a check failed, 3 the budget cut the run short.

``--device cpu --smoke`` runs the same code at the smoke profile's sizes on the CPU: the test suite runs it
(``tests/test_gpu_check.py``) so that the script keeps working while no GPU is at hand.

Measured runtime: the CPU dry run about 40 s on the 2-core development machine; no GPU run yet.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))       # the timing helpers the benchmarks share

import torch  # noqa: E402
from _timing import Stepper, projection, sync  # noqa: E402

import faeval as fe  # noqa: E402
from faeval.book import paper  # noqa: E402
from faeval.book.profiles import get_profile  # noqa: E402
from faeval.config import canonical_config  # noqa: E402
from faeval.data import Dataset  # noqa: E402
from faeval.many import fit_group  # noqa: E402
from faeval.methods import METHODS, UnsupportedArchError  # noqa: E402
from faeval.models import ARCHS  # noqa: E402
from faeval.seeds import generator  # noqa: E402
from faeval.snapshot import snapshot  # noqa: E402
from faeval.store import load_meta  # noqa: E402
from faeval.train import fit  # noqa: E402

#: rules whose training step may run in bfloat16: the CPU check on the audit's runs of every seed (benchmarks/
#: README.md, 2026-12-05) kept every claim's status for these; EP's credit and State Bridge's do not survive it
BF16_RULES = ("bp", "fa", "dfa", "credit_bridge", "frozen")
AUDIT_NOTEBOOK = ROOT / "notebooks" / "01_audit.ipynb"
DEFAULT_CPU_CLAIMS = ROOT / ".gpu_check" / "claims" / "01_audit.json"


class OutOfTime(BaseException):
    """The budget ran out (a BaseException, so that no ``except Exception`` inside faeval swallows it)."""


class Report:
    """What the check measured, section by section, rewritten (atomically) after every step."""

    def __init__(self, out: Path, meta: dict) -> None:
        self.out, self.data = out, {**meta, "sections": {}}
        out.mkdir(parents=True, exist_ok=True)
        self.start = time.perf_counter()

    def section(self, name: str) -> dict:
        return self.data["sections"].setdefault(name, {"status": "running", "checks": [], "measures": {}})

    def check(self, section: str, name: str, ok: bool, detail: str = "") -> bool:
        self.section(section)["checks"].append({"name": name, "ok": bool(ok), "detail": detail})
        self.write()
        return bool(ok)

    def measure(self, section: str, **values) -> None:
        self.section(section)["measures"].update(values)
        self.write()

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        for name, text in (("report.json", json.dumps(self.data, indent=1, default=str)),
                           ("summary.md", summary(self.data))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(self.out / name)


def summary(data: dict) -> str:
    """The report as markdown: one table of every section's status, then each section's checks and measures."""
    lines = [f"# GPU check, {data['date']}", "",
             f"Device: {data['device_name']} ({data['device']}); torch {data['torch']}; Python {data['python']}; "
             f"{data['profile']} sizes; budget {data['budget_s']} s, elapsed {data.get('elapsed_s', 0)} s.", "",
             "| section | status | checks passed | seconds |", "|---|---|---|---|"]
    for name, s in data["sections"].items():
        passed = sum(c["ok"] for c in s["checks"])
        lines.append(f"| {name} | {s['status']} | {passed}/{len(s['checks'])} | {s.get('seconds', '')} |")
    for name, s in data["sections"].items():
        lines += ["", f"## {name}: {s['status']}"]
        if s.get("error"):
            lines += ["", "```", s["error"].rstrip(), "```"]
        failed = [c for c in s["checks"] if not c["ok"]]
        lines += [f"- FAILED {c['name']}: {c['detail']}" for c in failed]
        if len(s["checks"]) > len(failed):
            lines.append(f"- {len(s['checks']) - len(failed)} checks passed")
        for key, value in s["measures"].items():
            lines.append(f"- {key}: {_fmt(value)}")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        keys = list(dict.fromkeys(k for v in value.values() for k in v))
        rows = ["", "", "  | | " + " | ".join(keys) + " |", "  |---" * (len(keys) + 1) + "|"]
        rows += [f"  | {name} | " + " | ".join(_fmt(v.get(k, "")) for k in keys) + " |" for name, v in value.items()]
        return "\n".join(rows)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Budget:
    """The run's deadline: a SIGALRM at its end raises :class:`OutOfTime` wherever the run is."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def arm(self) -> None:
        signal.signal(signal.SIGALRM, self._expire)
        signal.setitimer(signal.ITIMER_REAL, max(self.left(), 0.01))

    @staticmethod
    def _expire(signum, frame):
        raise OutOfTime()


@contextmanager
def timed(report: Report, section: str):
    s = report.section(section)
    start = time.perf_counter()
    try:
        yield s
        s["status"] = "passed" if all(c["ok"] for c in s["checks"]) else "failed"
    except OutOfTime:
        s["status"] = "cut off"
        raise
    except Exception:
        s["status"], s["error"] = "error", traceback.format_exc(limit=8)
    finally:
        s["seconds"] = round(time.perf_counter() - start, 1)
        report.write()


def _sig(x: float) -> float:
    """``x`` to three significant digits."""
    return float(f"{x:.3g}")


def _finite(*values) -> bool:
    return all(math.isfinite(float(v)) for v in values)


# ---------------------------------------------------------------------------------------------------------------
# 1. every rule takes a step on every architecture where it is defined
# ---------------------------------------------------------------------------------------------------------------
def check_steps(report: Report, P, device: str) -> None:
    cases = {}                                           # one config per architecture, from the chapters' sizes
    for over in P.sizes["cross_arch"]["archs"].values():
        cfg = canonical_config(**P.config("bp", P.seeds[0], **over))
        cases.setdefault(cfg["arch"], cfg)
    defined = {}
    for arch, base in sorted(cases.items()):
        for method in sorted(METHODS):
            name = f"{method} on {arch}"
            cfg = {**base, "method": method, "hparams": {}}
            try:
                stepper = Stepper(cfg, device, batch=32)
            except UnsupportedArchError:
                defined.setdefault(arch, []).append(f"{method}: not defined")
                continue
            stats = stepper.step()
            credit = stepper.rule.credit(stepper.x, stepper.y)
            snap = snapshot(stepper.model, stepper.x, stepper.y, credit_fn=stepper.rule.credit)   # as fit takes it
            loss = float(stats["loss"])
            credit_ok = all(c is None or bool(torch.isfinite(c).all()) for c in credit)
            snap_ok = _finite(snap.h_L, snap.g_L, snap.max_block_growth, *snap.hidden_norms)
            on = {str(p.device) for p in stepper.model.parameters()} | {str(stepper.x.device)}
            report.check("steps", name, _finite(loss) and credit_ok and snap_ok and on == {_device_str(device)},
                         f"loss {loss:.4g}, credit finite {credit_ok}, snapshot finite {snap_ok}, tensors on {on}")
            defined.setdefault(arch, []).append(method)
    report.check("steps", "every registered architecture was stepped", set(cases) == set(ARCHS),
                 f"stepped {sorted(cases)}; registered {sorted(ARCHS)}")
    report.measure("steps", rules_per_arch={arch: ", ".join(v) for arch, v in defined.items()})


def _device_str(device: str) -> str:
    d = torch.device(device)
    return f"cuda:{d.index or 0}" if d.type == "cuda" else d.type


# ---------------------------------------------------------------------------------------------------------------
# 2. a vectorised group equals the runs trained one by one
# ---------------------------------------------------------------------------------------------------------------
def _close(a, b, rtol: float) -> bool:
    return a is None and b is None or abs(a - b) <= rtol * (1 + abs(a))


def compare_histories(a, b, rtol: float = 1e-3) -> list[str]:
    """Where two runs' histories differ beyond ``rtol`` (empty: equal to float tolerance)."""
    diffs = []
    if [r.epoch for r in a.history] != [r.epoch for r in b.history]:
        return [f"epochs {[r.epoch for r in a.history]} != {[r.epoch for r in b.history]}"]
    for ra, rb in zip(a.history, b.history):
        pairs = {k: (ra[k], rb[k]) for k in ("train_loss", "test_loss", "test_acc")}
        pairs.update({"g_L": (ra.diag.g_L, rb.diag.g_L), "h_L": (ra.diag.h_L, rb.diag.h_L)})
        diffs += [f"epoch {ra.epoch} {k}: {x} vs {y}" for k, (x, y) in pairs.items() if not _close(x, y, rtol)]
    return diffs


def check_group(report: Report, P, device: str, smoke: bool) -> None:
    size = dict(subset=P.base.get("subset") or 8192, epochs=1 if smoke else 2, eval_n=min(P.base["eval_n"], 512))
    seeds = (42, 123)
    configs = [P.config("dfa", s, penalty=lam, **size) for s in seeds for lam in (0.0, 1e-2)]
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        for how, group in (("one by one", False), ("vectorised group", True)):
            store = Path(tmp, how.replace(" ", "_"))
            sync(device)
            start = time.perf_counter()
            runs = fe.fit_many(configs, results=store, device=device, group=group, workers=1, progress=False)
            sync(device)
            timings[how] = (time.perf_counter() - start, runs)
        (alone, single), (together, grouped) = timings["one by one"], timings["vectorised group"]
        sizes = {load_meta(r.path).get("trained_with", 1) for r in grouped}
    report.check("group", "the runs trained as one group", sizes == {len(configs)}, f"group sizes {sizes}")
    for cfg, a, b in zip(configs, single, grouped):
        diffs = compare_histories(a, b)
        report.check("group", f"seed {cfg['seed']}, penalty {cfg['penalty']}: group = alone", not diffs,
                     "; ".join(diffs[:3]) or "every epoch's losses, accuracy, g_L and |h_L| within 1e-3")
    report.check("group", "the runs differ from each other",
                 len({r.final.test_loss for r in grouped}) == len(grouped))
    report.measure("group", runs=f"DFA, seeds {list(seeds)} x penalties [0, 0.01], {size['epochs']} epochs "
                                 f"of {size['subset']} samples", one_by_one_s=round(alone, 2),
                   group_s=round(together, 2), speedup=round(alone / together, 2))


# ---------------------------------------------------------------------------------------------------------------
# 3. the paper profile's cost
# ---------------------------------------------------------------------------------------------------------------
def _random_images(n: int, shape: tuple, n_test: int = 256) -> Dataset:
    g = generator(0, "gpu-check cifar-shaped data")
    return Dataset(x_train=torch.randn(n, *shape, generator=g), y_train=torch.randint(0, 10, (n,), generator=g),
                   x_test=torch.randn(n_test, *shape, generator=g), y_test=torch.randint(0, 10, (n_test,), generator=g),
                   num_classes=10, input_shape=shape, name="random CIFAR-shaped")


def check_paper_cost(report: Report, device: str, smoke: bool) -> None:
    paper_p = get_profile("smoke" if smoke else "paper")
    base = canonical_config(**paper_p.config("bp", 42, dataset="cifar10"))
    steps = 1 if smoke else 30
    rates = {}
    for method in paper_p.methods:
        cfg = {**base, "method": method}
        rates[method] = round(1 / Stepper(cfg, device).seconds_per_step(steps), 1)
        report.measure("paper_cost", one_run_steps_per_s=rates)
    report.check("paper_cost", "every audit rule steps at the paper's size", all(r > 0 for r in rates.values()))
    # one vectorised group of 3 seeds against the same 3 runs one by one (per-epoch records included in both)
    shape, n_steps = (3, 32, 32), (2 if smoke else 60)
    ds = _random_images(128 * n_steps, shape).to(device)
    group_rates, speedups = {}, {}

    def build(method, seed):
        model = fe.build_model(base["arch"], shape, 10, seed=seed, **base["model"]).to(device)
        return model, fe.build_method(method, model, seed=seed)

    for method in ("bp", "dfa"):
        fit(*build(method, 0), ds, 1, 0, progress=False, eval_n=256)      # warm-up (kernels, allocator)
        sync(device)
        start = time.perf_counter()
        for s in (0, 1, 2):
            fit(*build(method, s), ds, 1, s, progress=False, eval_n=256)
        sync(device)
        alone = time.perf_counter() - start
        built = [build(method, s) for s in (0, 1, 2)]
        start = time.perf_counter()
        fit_group([b[0] for b in built], [b[1] for b in built], [ds] * 3, 1, [0, 1, 2], progress=False, eval_n=256)
        sync(device)
        together = time.perf_counter() - start
        group_rates[method] = round(3 * n_steps / together, 1)
        speedups[method] = round(alone / together, 2)
    report.measure("paper_cost", group_of_3_steps_per_s=group_rates, group_speedup=speedups)
    planned = paper_p.planned_runs()
    # the dry run times one step of 16 samples per kind of run: the code path, not the numbers
    est = projection(planned, device, 1 if smoke else 8, max(speedups.values()), *((16, 0) if smoke else ()))
    ref = paper("compute.paper_runs")
    report.measure("paper_cost", **{
        "profile": paper_p.name, "planned_runs": len(planned), "kinds_timed": est["kinds"],
        "projected_hours_one_by_one": _sig(est["alone"] / 3600),
        "projected_hours_grouped": _sig(est["grouped"] / 3600),
        "projected_hours_per_125_runs": _sig(est["grouped"] / 3600 * 125 / len(planned)),   # the paper's count
        "hours_by_rule": {m: _sig(t / 3600) for m, t in sorted(est["by_method"].items(), key=lambda kv: -kv[1])},
        "paper": f"{ref['text']} ({ref['source']})"})
    report.check("paper_cost", "the projection is finite", _finite(est["alone"], est["grouped"]))


# ---------------------------------------------------------------------------------------------------------------
# 4. the audit chapter on the device
# ---------------------------------------------------------------------------------------------------------------
def run_notebook(path: Path, parameters: dict) -> dict:
    """Execute a notebook's code cells in one namespace, as papermill would (``parameters`` injected right after
    the cell tagged ``parameters``), without Jupyter: ``display`` shows nothing. Returns the namespace."""
    ns: dict = {"__name__": "__main__", "display": lambda *a, **k: None}
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        exec(compile("".join(cell["source"]), f"{path.name}", "exec"), ns)
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            ns.update(parameters)
    return ns


def check_audit(report: Report, P, cpu_claims: Path | None) -> dict:
    start = time.perf_counter()
    device = P.device
    ns = run_notebook(AUDIT_NOTEBOOK, {"profile": P.name, **P.parameters()["overrides"], "device": device,
                                       "results_dir": str(P.results)})
    seconds = time.perf_counter() - start
    claims = ns["claims"]
    runs = [r for part in ns["parts"].values() for r in part.values()]
    report.measure("audit", notebook=AUDIT_NOTEBOOK.name, profile=P.name, overrides=P.parameters()["overrides"],
                   runs=len(runs),
                   wall_s=round(seconds, 1), train_s=round(sum(load_meta(r.path)["train_seconds"] for r in runs), 1),
                   judged_regime=ns["decision"].judged)
    report.check("audit", "every run trained on the device", all(
        str(next(r.model.parameters()).device) == _device_str(device) for r in runs))
    statuses = {f"{r['id']} ({r['regime'] or '-'})": r["status"] for r in claims.rows}
    report.measure("audit", claims_held=sum(s == "held" for s in statuses.values()), claims=len(statuses))
    if cpu_claims is None or not cpu_claims.is_file():
        report.measure("audit", cpu_claims="none given: statuses not compared", statuses=statuses)
    else:
        compare_claims(report, cpu_claims, claims.rows, claims.parameters)
    return ns


def compare_claims(report: Report, cpu_claims: Path, rows: list[dict], parameters: dict) -> None:
    """Every claim's status here against the CPU build's claims file: one check per claim (and regime), after
    one that the file was measured with the same profile and overrides (``parameters``: this run's)."""
    saved = json.loads(cpu_claims.read_text())
    theirs = saved.get("parameters", {})
    report.check("audit", "the CPU file measured the same profile", (theirs.get("profile"), theirs.get("overrides"))
                 == (parameters["profile"], parameters["overrides"]),
                 f"CPU: {theirs.get('profile')} {theirs.get('overrides')}; here: {parameters['profile']} "
                 f"{parameters['overrides']}")
    cpu = {(r["id"], r["regime"]): r for r in saved["claims"]}
    ours = {(r["id"], r["regime"]): r for r in rows}
    report.check("audit", "the same claims as the CPU file", set(cpu) == set(ours),
                 f"only on the CPU: {sorted(set(cpu) - set(ours))}; only here: {sorted(set(ours) - set(cpu))}")
    table = {}
    for key in sorted(set(cpu) & set(ours), key=lambda k: list(ours).index(k)):
        a, b = cpu[key], ours[key]
        name = f"{key[0]} ({key[1] or '-'})"
        table[name] = {"CPU": a["status"], "here": b["status"], "CPU ours": a["ours"], "ours here": b["ours"]}
        report.check("audit", f"{name}: same status", a["status"] == b["status"],
                     f"CPU {a['status']} ({a['ours']}), here {b['status']} ({b['ours']})")
    report.measure("audit", cpu_claims=str(cpu_claims), against_cpu=table)


# ---------------------------------------------------------------------------------------------------------------
# 5. bfloat16 on the device
# ---------------------------------------------------------------------------------------------------------------
READ = {"acc": lambda r: r.test_acc, "growth": lambda r: r.final.diag.max_block_growth,
        "g_L": lambda r: r.final.diag.g_L, "deep_gamma": lambda r: r.final.diag.deep_gamma}


def check_bfloat16(report: Report, P, device: str, budget: Budget, smoke: bool) -> None:
    parts = P.experiment("audit")                           # the float32 runs, trained by the audit section
    seed = P.seeds[0]
    steps = 2 if smoke else 30
    moves, speed = {}, {}
    for part, runs in list(parts.items())[:1 if smoke else None]:
        for (method, s), run in runs.items():
            if s != seed or run.config["method"] not in BF16_RULES:
                continue
            name = f"{part}: {method}"
            f32 = Stepper(run.config, device).seconds_per_step(steps)
            b16 = Stepper(run.config, device, precision="bfloat16").seconds_per_step(steps)
            speed[name] = round(f32 / b16, 2)
            low = fe.experiment(**run.config, precision="bfloat16", results=P.results, device=device, progress=False)
            spread = {k: _spread([f(r) for (m, _), r in runs.items() if m == method]) for k, f in READ.items()}
            row = {}
            for k, f in READ.items():
                a, b = f(run), f(low)
                if a is None or b is None:          # no credit to read (the frozen baseline's Gamma)
                    row[k] = f"{a} -> {b}"
                    continue
                row[k] = f"{a:.4g} -> {b:.4g}" + (f" ({abs(b - a) / spread[k]:.2f} spreads)" if spread[k] else "")
                row[f"{k} within spread"] = abs(b - a) <= spread[k] if spread[k] else "no spread (one seed)"
            moves[name] = row
            report.check("bfloat16", f"{name}: bfloat16 run finite", _finite(*(f(low) for k, f in READ.items()
                                                                                if k != "deep_gamma")))
            report.measure("bfloat16", step_speedup=speed, float32_to_bfloat16=moves)
            if budget.left() < 30:
                report.measure("bfloat16", note="stopped early to stay inside the budget")
                return


def _spread(values) -> float:
    nums = [v for v in values if v is not None and math.isfinite(v)]
    return max(nums) - min(nums) if len(nums) > 1 else 0.0


# ---------------------------------------------------------------------------------------------------------------
#: what the device tool carries at most: the working tree and the carried folders together
CARRY_LIMIT = 64 * 2 ** 20


def prepare(dest: Path = ROOT / ".gpu_check") -> int:
    """Copy what the check reads on a machine without them into ``dest`` (git ignores it; name it in the device
    tool's ``carry``): Fashion-MNIST's four files, CIFAR-10's batches where found and small enough to travel, and
    the quick build's audit claims (``$FAEVAL_RESULTS`` or ``results/``, ``claims/01_audit.json``)."""
    import subprocess

    from faeval.data import dataset_files
    from faeval.store import results_dir

    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout.split(b"\0")
    used = sum((ROOT / f.decode()).stat().st_size for f in tracked if f and (ROOT / f.decode()).is_file())
    if dest.exists():
        shutil.rmtree(dest)
    copies = {"data/fashion-mnist": dataset_files("fashion-mnist")}     # raises, naming where it looked
    try:
        cifar = dataset_files("cifar10")
    except FileNotFoundError:
        cifar = []
        print("gpu-check-prepare: no CIFAR-10 files here; the paper-cost section uses random CIFAR-shaped data")
    size = used + sum(f.stat().st_size for f in copies["data/fashion-mnist"])
    if cifar and size + sum(f.stat().st_size for f in cifar) > CARRY_LIMIT:
        print(f"gpu-check-prepare: CIFAR-10 left out: its {sum(f.stat().st_size for f in cifar) / 2 ** 20:.0f} MiB "
              f"would take what travels over {CARRY_LIMIT // 2 ** 20} MiB; the paper-cost section uses random "
              "CIFAR-shaped data (a step's cost does not depend on the pixels)")
    elif cifar:
        copies["data/cifar10/cifar-10-batches-py"] = cifar
    claims = results_dir() / "claims" / "01_audit.json"
    if claims.is_file():
        copies["claims"] = [claims]
    else:
        print(f"gpu-check-prepare: no CPU claims file at {claims} (build the book at the quick profile first); the "
              "audit section will report its statuses without comparing them")
    for folder, files in copies.items():
        (dest / folder).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(f, dest / folder / f.name)
            print(f"gpu-check-prepare: {f} -> {(dest / folder / f.name).relative_to(ROOT)}")
    total = used + sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"gpu-check-prepare: {dest.relative_to(ROOT)} ready; the tree and it come to {total / 2 ** 20:.1f} MiB "
          f"of the {CARRY_LIMIT // 2 ** 20} MiB that travels. On the device: "
          "PYTHONPATH=. python3 scripts/gpu_check.py --out $OUT   (carry: .gpu_check)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="folder for report.json and summary.md")
    ap.add_argument("--prepare", action="store_true", help="copy the data and the CPU claims into .gpu_check/ "
                                                               "(`make gpu-check-prepare`) and stop")
    ap.add_argument("--device", default="cuda", help="the device to check (default cuda)")
    ap.add_argument("--smoke", action="store_true", help="the smoke profile's sizes (the CPU dry run)")
    ap.add_argument("--budget", type=float, default=420, help="seconds before the run stops itself (default 420)")
    ap.add_argument("--cpu-claims", type=Path, default=DEFAULT_CPU_CLAIMS if DEFAULT_CPU_CLAIMS.is_file() else None,
                    help="a CPU build's claims file of the audit (results/claims/01_audit.json), to compare "
                         "statuses with; default: .gpu_check/claims/01_audit.json when present")
    ap.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run these sections only")
    args = ap.parse_args(argv)
    if args.prepare:
        return prepare()
    os.environ.setdefault("MPLBACKEND", "Agg")         # the audit notebook's figures, drawn and not shown
    os.environ.setdefault("FAEVAL_PROGRESS", "0")
    if (ROOT / ".gpu_check" / "data").is_dir():         # `make gpu-check-prepare` copied the data there
        os.environ.setdefault("FAEVAL_DATA", str(ROOT / ".gpu_check" / "data"))
    if args.out is None:
        ap.error("--out DIR is required (the folder for report.json and summary.md)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: --device {args.device}, but torch {torch.__version__} sees no CUDA device "
              "(use --device cpu --smoke for the dry run)", file=sys.stderr)
        return 2
    store = Path(tempfile.mkdtemp(prefix="faeval-gpu-check-"))
    # the dry run trains the audit's runs on one seed for one epoch: the same code paths in a fraction of the time
    P = get_profile("smoke", seeds=[42], epochs=1, device=args.device, results_dir=str(store)) if args.smoke else \
        get_profile("quick", device=args.device, results_dir=str(store))
    budget = Budget(args.budget)
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.processor() or "CPU"
    report = Report(args.out, {"date": time.strftime("%Y-%m-%d %H:%M"), "device": args.device, "device_name": name,
                               "torch": torch.__version__, "python": platform.python_version(), "profile": P.name,
                               "budget_s": args.budget, "command": " ".join(sys.argv)})
    report.write()
    budget.arm()
    run: dict[str, Callable[[], object]] = {
        "steps": lambda: check_steps(report, P, args.device),
        "group": lambda: check_group(report, P, args.device, args.smoke),
        "paper_cost": lambda: check_paper_cost(report, args.device, args.smoke),
        "audit": lambda: check_audit(report, P, args.cpu_claims),
        "bfloat16": lambda: check_bfloat16(report, P, args.device, budget, args.smoke),
    }
    cut = False
    try:
        for section in args.only or SECTIONS:
            if cut or budget.left() < SECTIONS[section]:
                report.section(section).update(status="skipped", error=f"{max(budget.left(), 0):.0f} s of the budget "
                                                                       f"left; it needs about {SECTIONS[section]} s")
                cut = True
                continue
            try:
                with timed(report, section):
                    run[section]()
            except OutOfTime:
                cut = True
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    except OutOfTime:           # between two sections
        cut = True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        report.write()
        shutil.rmtree(store, ignore_errors=True)
    states = [s["status"] for s in report.data["sections"].values()]
    print(summary(report.data))
    return 1 if any(s in ("failed", "error") for s in states) else 3 if cut else 0


#: each section, and the seconds it needs at least (it is skipped when less is left)
SECTIONS = {"steps": 5, "group": 10, "paper_cost": 15, "audit": 60, "bfloat16": 30}

if __name__ == "__main__":
    sys.exit(main())
