"""The scheduler's cost model and `prepare`'s time-left estimate, replayed on a store's runs.

Takes the quick profile's planned runs that a store holds, with the seconds each really trained
(`train_seconds`), and replays `prepare` on two workers: the jobs in the scheduler's order (largest
estimated cost first), each worker taking the next job when it comes free. Prints

* measured over estimated seconds per architecture (median; one common scale, so 1.00 is exact);
* the bar's estimate (`schedule.RemainingTime`) against the time really left, at minutes 5, 10, ...
  to the end, on the store's own speed and on a host 1.36x slower (the last cold build's).

Run: FAEVAL_RESULTS=<a quick store> .venv/bin/python benchmarks/eta_replay.py   (seconds)
"""
from __future__ import annotations

import json
import statistics
from collections import defaultdict

from faeval.book.experiments import planned_runs
from faeval.book.profiles import get_profile
from faeval.schedule import RemainingTime, _cost, cost_kind, in_order
from faeval.store import run_dir


def stored_runs(profile: str = "quick") -> list[tuple[dict, float]]:
    out = []
    for cfg in planned_runs(get_profile(profile)):
        path = run_dir(cfg) / "config.json"
        if path.is_file():
            out.append((cfg, json.loads(path.read_text())["train_seconds"]))
    return out


def replay(costs: list[float], seconds: list[float], kinds: list | None, workers: int = 2, every: float = 300.0
           ) -> list[tuple]:
    """``[(minute, estimated left, really left)]`` of the jobs (in the order given) on ``workers``."""
    start, end = in_order(seconds, [0.0] * workers)
    total = max(end)
    rows, t = [], every
    while t < total:
        eta = RemainingTime(costs, workers, kinds)
        for k in sorted(range(len(start)), key=start.__getitem__):
            if start[k] <= t:
                eta.started(k, start[k])
            if end[k] <= t:
                eta.finished(k, end[k])
        rows.append((t / 60, eta.remaining(t), total - t))
        t += every
    return rows


def main() -> None:
    runs = stored_runs()
    if not runs:
        print("eta_replay: no stored runs of the quick profile in the run store; set FAEVAL_RESULTS to a quick store")
        return
    runs = sorted(((c, s, _cost(c)) for c, s in runs), key=lambda r: -r[2])     # the scheduler's order
    costs = [c for _, _, c in runs]
    seconds = [s for _, s, _ in runs]
    scale = sum(seconds) / sum(costs)
    by_arch = defaultdict(list)
    for cfg, s, c in runs:
        by_arch[cfg["arch"]].append(s / (c * scale))
    print(f"{len(runs)} runs, {sum(seconds):.0f} worker-seconds; measured / estimated seconds, median per "
          "architecture:")
    print("  " + ", ".join(f"{a} {statistics.median(r):.2f} ({len(r)})" for a, r in sorted(by_arch.items())))
    for label, slow in (("the store's speed", 1.0), ("1.36x slower", 1.36)):
        rows = replay(costs, [s * slow for s in seconds], [cost_kind(cfg) for cfg, _, _ in runs])
        errors = [100 * (est - left) / left for _, est, left in rows if est is not None]
        print(f"time left, estimated against real ({label}; makespan {rows[-1][0] + rows[-1][2] / 60:.0f} min):")
        print("  " + ", ".join(f"{m:.0f}: {e:+.0f}%" for (m, _, _), e in zip(rows, errors)))
        print(f"  worst from minute 5: {max(errors, key=abs):+.0f}%")


if __name__ == "__main__":
    main()
