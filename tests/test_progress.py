"""prepare's progress: the time left, estimated from each job's cost, and the training time by chapter.

A bar that counts runs while the longest start first read ``2/141 [07:11<7:22:56]`` for a build that
took an hour. These tests replay schedules of jobs on two workers, the way fit_many's process pool
runs them, and compare the estimate with the time that was really left.
"""
from __future__ import annotations

import random

import pytest

from faeval.schedule import RemainingTime, _run_jobs, in_order

TICK = 5.0


def schedule(durations, workers=2):
    """``(start, end)`` of each job when the jobs run in order on ``workers`` workers."""
    return tuple(dict(enumerate(times)) for times in in_order(durations, [0.0] * workers))


def replay(costs, durations, workers=2):
    """Feed an estimator as fit_many's loop does every TICK seconds (a pool also marks the job it has
    queued next as running); return ``[(t, estimate, truth)]``."""
    start, end = schedule(durations, workers)
    last_end = max(end.values())
    eta = RemainingTime(costs, workers)
    out, t, prev = [], 0.0, 0.0
    while t < last_end:
        t += TICK
        for k in sorted(k for k in end if prev < end[k] <= t):
            eta.finished(k, t, since=prev)
        queued_next = min((k for k in start if start[k] > t), default=None)
        for k in range(len(costs)):
            if start[k] <= t < end[k] or k == queued_next:
                eta.started(k, t)
        out.append((t, eta.remaining(t), last_end - t))
        prev = t
    return out


def _jobs(seed, n=60, noise=0.15):
    """Longest first, as fit_many orders them; 40 s per cost unit, +-15% per job."""
    rng = random.Random(seed)
    costs = sorted((rng.choice([1, 1, 1, 2, 3, 6]) * rng.uniform(0.5, 1.5) for _ in range(n)), reverse=True)
    return costs, [40 * c * rng.uniform(1 - noise, 1 + noise) for c in costs]


@pytest.mark.parametrize("seed", range(5))
def test_the_time_left_is_right_to_20_percent_from_the_first_minutes(seed):
    costs, durations = _jobs(seed)
    total = max(schedule(durations)[1].values())
    known = [(t, est, truth) for t, est, truth in replay(costs, durations) if est is not None]
    assert known[0][0] <= 0.15 * total                    # an estimate within the first sixth of the build
    for t, est, truth in known:
        if truth >= 0.1 * total:                          # not judged in the last tenth, where seconds are %
            assert est == pytest.approx(truth, rel=0.2), (t, est, truth)


def test_counting_runs_instead_is_far_off_on_the_same_jobs():
    """The old bar's estimate, elapsed / runs done x runs left, once a tenth of the time has passed."""
    costs, durations = _jobs(0)
    ends = sorted(schedule(durations)[1].values())
    total = ends[-1]
    k = next(i + 1 for i, e in enumerate(ends) if e >= 0.1 * total)
    t = ends[k - 1]
    assert t / k * (len(costs) - k) > 1.5 * (total - t)


def test_before_any_job_ends_nothing_is_claimed_and_unknown_workers_claim_nothing():
    eta = RemainingTime([3.0, 2.0], workers=2)
    eta.started(0, 0.0)
    assert eta.remaining(10.0) is None and eta.done(10.0) == 0.0
    eta.finished(0, 12.0)
    assert eta.remaining(12.0) == pytest.approx(8.0) and eta.done(12.0) == 3.0
    blind = RemainingTime([3.0, 2.0], workers=0)
    blind.finished(0, 12.0, since=0.0)
    assert blind.remaining(12.0) is None


def test_the_bar_counts_runs_and_says_the_time_left(capsys, monkeypatch):
    from concurrent.futures import Future

    monkeypatch.setenv("FAEVAL_PROGRESS", "1")
    cfg = dict(method="bp", arch="resmlp", dataset="synthetic", epochs=1, seed=0,
               model={"width": 8, "depth": 1}, hparams={}, data={"n_train": 100})

    def submit(idx):
        f: Future = Future()
        f.set_result(None)
        return f
    _run_jobs(submit, [[0], [1]], [cfg, cfg], "runs (test)", True, workers=2)
    err = capsys.readouterr().err
    assert "2/2 runs" in err and "elapsed" in err
