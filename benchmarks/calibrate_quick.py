"""Calibrate the quick profile (issue 7): when do D1/D2 fire for DFA on each candidate setting?

Trains DFA, BP and the frozen-blocks baseline on every candidate of
``faeval.book.calibration.CANDIDATES`` (the paper's recipe on Fashion-MNIST, per-pixel
standardisation, 40% label noise, the teacher-student task, width 512) for about
``--steps`` steps each, through the run store (stored runs are reused), and prints per
candidate and seed: the step and training seconds at which D1 and D2 first fire
(or "-" when not within the horizon), DFA's final growth / ||g_L|| / accuracy, the
DFA - frozen gap (D3), whether BP fires anything, and each run's training seconds.
``--json PATH`` also writes the rows.

Cold, the default horizon (9,400 steps = 20 Fashion-MNIST epochs, one seed) costs about
20 minutes on 2 CPU cores.

Run: .venv/bin/python benchmarks/calibrate_quick.py [--steps 9400] [--seeds 42 123 456]
     [--candidates paper label_noise] [--results DIR] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

from faeval.book.calibration import CANDIDATES, calibrate


def _when(f) -> str:
    return "-" if f is None else f"{f['step']} ({f['seconds']:.0f} s)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=9400, help="training steps per run (default 9400)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument("--results", default=None, help="run store (default: $FAEVAL_RESULTS or ./results)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)

    rows = calibrate(args.candidates, steps=args.steps, seeds=args.seeds, results=args.results,
                     progress=not args.quiet)
    head = (f"{'candidate':<12} {'seed':>4} {'steps':>6} {'D1 at step':>14} {'D2 at step':>14} {'growth':>8} "
            f"{'g_L':>9} {'DFA acc':>8} {'frozen':>7} {'gap pp':>7} {'BP acc':>7} {'BP fires':>8} "
            f"{'s DFA':>6} {'s BP':>6} {'s frozen':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['candidate']:<12} {r['seed']:>4} {r['steps']:>6} {_when(r['D1']):>14} {_when(r['D2']):>14} "
              f"{r['dfa_growth']:>8.3g} {r['dfa_g_L']:>9.2e} {r['dfa_acc']:>8.4f} {r['frozen_acc']:>7.4f} "
              f"{r['gap_pp']:>+7.1f} {r['bp_acc']:>7.4f} {','.join(r['bp_fires']) or 'no':>8} "
              f"{r['dfa_seconds']:>6.0f} {r['bp_seconds']:>6.0f} {r['frozen_seconds']:>8.0f}")
    print("\nD1/D2 columns: first step (training seconds) at which DFA's per-epoch snapshot fires; '-' = not "
          "within the horizon.")
    for c in args.candidates:
        print(f"  {c}: {CANDIDATES[c].label}")
    if args.json:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.json)), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(tmp, args.json)
        print(f"rows written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
