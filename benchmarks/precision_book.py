"""The per-rule bfloat16 policy checked on a chapter's runs (issue 41, item 1).

The policy: ``precision="bfloat16"`` for the rules and architectures where ``precision.py`` measured a gain
and the audit's check passed (:data:`RULES` on :data:`ARCHS`), float32 for the rest (EP, EP64 and State
Bridge, whose credit bfloat16 cannot resolve; ViT-Mini, slower in bfloat16; the layer-wise rules, which
``precision.py`` did not measure). The precision is part of a run's key, so both precisions live in one store.

For each chapter part named on the command line, this trains the part's runs in float32 and the policy's
runs again in bfloat16 (``fit_many``, two workers) and sums both precisions' training seconds. It compares
each bfloat16 run with its float32 twin on the numbers the claims read (final test accuracy, the growth of
||h_L|| over training, the largest block growth, g_L and deep Gamma), each difference against the float32
spread (max - min) of the same number over the profile's seeds of that config: a difference at or above it
is flagged (a config trained on one seed only has no spread, and is listed as such). It also fits the
head-rate dial (:func:`faeval.book.head.fit_runs`) on the grid's first-seed runs in each precision: the
fitted head_lr decides the regime every chapter's claims are judged in.

Runtime: training dominates. By default (the fit and the penalty chapter's sweep and frozen baseline at quick,
64 runs) 586 + 660 s on the 2-core machine with a cold store (2026-12-08, ``README.md``); runs the store holds
are loaded, not trained again.
Run: .venv/bin/python benchmarks/precision_book.py [--results DIR] [--no-fit] [--compare-only] [chapter:part ...]
"""
from __future__ import annotations

import argparse
import functools
import math
import time
from collections import defaultdict
from pathlib import Path

from faeval.book import experiments, head
from faeval.book.profiles import get_profile
from faeval.config import canonical_config
from faeval.diagnostics import deep_mean
from faeval.schedule import fit_many
from faeval.store import distinguishing_options, load_run, results_dir, run_dir, train_seconds

RULES = ("bp", "fa", "dfa", "credit_bridge", "frozen")
ARCHS = ("resmlp", "cnn", "resnet")
_MARK = {True: "yes", False: "**no**", None: "one seed"}
DEFAULT_PARTS = ("penalty:sweep", "penalty:frozen")
NUMBERS = ("test_acc", "h_L growth", "max block growth", "g_L", "deep Gamma")


def in_bfloat16(cfg: dict) -> bool:
    """Whether the policy trains run ``cfg`` in bfloat16."""
    return cfg["method"] in RULES and cfg["arch"] in ARCHS


def twin(cfg: dict) -> dict:
    """``cfg`` with its training step in bfloat16."""
    return canonical_config(**{**cfg, "precision": "bfloat16"})


def numbers(run) -> dict[str, float]:
    """The numbers a claim reads from one run."""
    first, last = run.history[0].diag, run.final.diag
    gamma = deep_mean(last.gamma) if last.gamma is not None else math.nan
    return {"test_acc": run.final.test_acc, "h_L growth": last.h_L / first.h_L,
            "max block growth": last.max_block_growth, "g_L": last.g_L, "deep Gamma": gamma}


def _part_configs(P, spec: str) -> list[dict]:
    chapter, _, part = spec.partition(":")
    parts = experiments.plan(chapter, P)
    if part not in parts:
        raise SystemExit(f"{spec}: chapter {chapter!r} has parts {', '.join(parts)}")
    return [canonical_config(**c) for c in parts[part].values()]


def _label(cfg: dict) -> str:
    return f"{cfg['method']} {cfg['arch']} {distinguishing_options(cfg)} s{cfg['seed']}".replace("  ", " ")


def _without_seed(cfg: dict) -> str:
    return repr(sorted((k, repr(v)) for k, v in cfg.items() if k != "seed"))


@functools.cache
def _numbers_at(path: Path) -> dict[str, float]:
    """:func:`numbers` of the run stored at ``path``, loaded once (parts share runs, and ``--table`` reads all)."""
    return numbers(load_run(path, device="cpu"))


def compare(configs: list[dict], results) -> list[dict]:
    """One row per policy run and number: float32, bfloat16, the difference and the float32 seed spread."""
    policy = [c for c in configs if in_bfloat16(c)]      # the policy reads rule and architecture, not the seed
    by_config = defaultdict(list)
    for c in policy:
        by_config[_without_seed(c)].append(_numbers_at(run_dir(c, results)))
    rows = []
    for c in policy:
        f32, bf = _numbers_at(run_dir(c, results)), _numbers_at(run_dir(twin(c), results))
        seeds = by_config[_without_seed(c)]
        for name in NUMBERS:
            values = [s[name] for s in seeds]
            spread = max(values) - min(values) if len(values) > 1 else math.nan
            diff = abs(bf[name] - f32[name])
            rows.append({"run": _label(c), "number": name, "float32": f32[name], "bfloat16": bf[name],
                         "diff": diff, "spread": spread,
                         "within": None if math.isnan(spread) else diff < spread or diff == 0})
    return rows


def _fit(P, results, bfloat16: bool):
    runs = {}
    for k, c in head.fit_inputs(P).items():
        c = canonical_config(**c)
        runs[k] = load_run(run_dir(twin(c) if bfloat16 and in_bfloat16(c) else c, results), device="cpu")
    return head.fit_runs({k: r for k, r in runs.items() if len(k) == 3},
                         {k: r for k, r in runs.items() if len(k) == 2}, P.seeds[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("parts", nargs="*", default=list(DEFAULT_PARTS),
                    help=f"chapter:part, e.g. penalty:sweep (default: {' '.join(DEFAULT_PARTS)})")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--results", default=None, help="run store, both precisions (default: $FAEVAL_RESULTS or "
                    "./results, whose float32 runs are the book's own)")
    ap.add_argument("--no-fit", dest="fit", action="store_false", help="skip the head-rate fit in each precision")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--table", action="store_true", help="also print every number of every run")
    ap.add_argument("--compare-only", action="store_true", help="train nothing; compare what is stored")
    args = ap.parse_args()
    P = get_profile(args.profile, results_dir=str(results_dir(args.results)))
    by_part = {spec: _part_configs(P, spec) for spec in args.parts}
    configs = [c for part in by_part.values() for c in part]
    if args.fit:
        configs = [canonical_config(**c) for c in head.fit_inputs(P).values()] + configs
    configs = list({repr(sorted(c.items())): c for c in configs}.values())
    todo = configs + [twin(c) for c in configs if in_bfloat16(c)]
    if not args.compare_only:
        start = time.perf_counter()
        fit_many(todo, results=args.results, workers=args.workers)
        print(f"trained/loaded {len(todo)} runs in {time.perf_counter() - start:.0f} s")
    if args.fit:
        for name, bf in (("float32", False), ("policy", True)):
            f = _fit(P, args.results, bf)
            totals = ", ".join(f"{h:g}: {t:.2f}" for h, t in sorted(f.totals.items(), reverse=True))
            print(f"head-rate fit, {name}: head_lr {f.head_lr:g} (distance by head_lr {totals})")
    print("\n| part | policy runs | float32 s | bfloat16 s | numbers with a seed spread | below it | "
          "largest accuracy move (pp) |\n|---|---|---|---|---|---|---|")
    flagged = {}
    for spec, part in by_part.items():
        policy = [c for c in part if in_bfloat16(c)]
        rows = compare(part, args.results)
        spread = [r for r in rows if r["within"] is not None]
        flagged.update({(r["run"], r["number"]): r for r in spread if not r["within"]})
        move = max((r["diff"] for r in rows if r["number"] == "test_acc"), default=math.nan)
        print(f"| {spec} | {len(policy)} | {sum(train_seconds(c, args.results) for c in policy):.0f} | "
              f"{sum(train_seconds(twin(c), args.results) for c in policy):.0f} | {len(spread)} | "
              f"{sum(r['within'] for r in spread)} | {100 * move:.2f} |")
    print("\nAt or above the float32 seed spread:\n\n| run | number | float32 | bfloat16 | abs diff | spread |\n"
          "|---|---|---|---|---|---|")
    for r in flagged.values():
        print(f"| {r['run']} | {r['number']} | {r['float32']:.4g} | {r['bfloat16']:.4g} | {r['diff']:.3g} | "
              f"{r['spread']:.3g} |")
    if args.table:
        print("\nEvery number:\n\n| run | number | float32 | bfloat16 | abs diff | float32 seed spread | "
              "below the spread |\n|---|---|---|---|---|---|---|")
        for r in compare(configs, args.results):
            print(f"| {r['run']} | {r['number']} | {r['float32']:.4g} | {r['bfloat16']:.4g} | {r['diff']:.3g} | "
                  f"{r['spread']:.3g} | {_MARK[r['within']]} |")

if __name__ == "__main__":
    main()
