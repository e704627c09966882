"""The book's command line: ``python -m faeval.book prepare --help``.

``prepare`` trains every run a profile's notebooks ask for (:mod:`faeval.book.experiments`), so that
the notebooks then only load them. The library's own commands (train, runs, audit) are
``python -m faeval``.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

from ..__main__ import dispatch
from ..schedule import dask_executor, exit_on_sigterm, train_until_stable
from ..store import run_dir
from .experiments import check_chapters, seconds_by_chapter
from .profiles import PROFILES, get_profile


def _prepare(args) -> int:
    logging.basicConfig(level=logging.INFO, format="prepare: %(message)s")
    exit_on_sigterm()
    p = get_profile(args.profile, results_dir=args.results)
    chapters = check_chapters(args.chapters.split(",")) if args.chapters else None
    configs = p.planned_runs(chapters)
    stored = sum(run_dir(c, args.results).is_dir() for c in configs)
    which = f" (chapters {', '.join(chapters)})" if chapters else ""
    print(f"prepare: profile {p.name!r}{which} asks for {len(configs)} runs; {stored} already in the store",
          flush=True)
    executor = None
    if args.scheduler:
        executor = dask_executor(args.scheduler)
        print(f"prepare: sending the runs to the Dask scheduler at {args.scheduler}", flush=True)
    start = time.perf_counter()
    trained = train_until_stable(lambda: p.planned_runs(chapters), results=args.results, device=args.device,
                                 progress=not args.quiet, workers=args.workers, executor=executor)
    print(f"prepare: {len(trained)} runs trained in {time.perf_counter() - start:.0f} s", flush=True)
    by = seconds_by_chapter(p, args.results)
    total = sum(s for _, s in by.values()) or 1.0
    print("prepare: training time by chapter (worker-seconds of its stored runs; a run that several chapters "
          "plan counts for the first):\n" + "\n".join(f"  {name:14s} {n:4d} runs {s:8.0f} s {100 * s / total:5.1f}%"
                                                      for name, (n, s) in by.items()), flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faeval.book", description=(
        "The book's machinery: train every run a profile's notebooks ask for."))
    sub = parser.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("prepare", help="train every run a profile's notebooks ask for (before `make book`)",
                        description="Train every run the book's notebooks request at a profile "
                                    "(faeval.book.experiments), grouped and spread over processes, so the notebooks "
                                    "then only load them. Stored runs are skipped.")
    pr.add_argument("--profile", default="quick", help=f"{', '.join(PROFILES)} (default quick)")
    pr.add_argument("--workers", type=int, default=None, help="processes (default: one per core on a CPU)")
    pr.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    pr.add_argument("--scheduler", metavar="ADDRESS",
                    help="send the runs to the Dask scheduler at ADDRESS (e.g. tcp://10.0.0.5:8786); the store "
                         "(--results) must be a path every worker sees. Needs the 'cluster' extra")
    pr.add_argument("--chapters", metavar="NAME[,NAME...]",
                    help="train only these chapters' runs (faeval.book.experiments), e.g. quickstart,audit "
                         "(default: every chapter)")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.add_argument("--results", help="the store's directory (default $FAEVAL_RESULTS or ./results)")
    pr.set_defaults(func=_prepare)
    return dispatch(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
