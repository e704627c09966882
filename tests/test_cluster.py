"""Many runs beyond this process: a real Dask LocalCluster (2 workers of 1 thread on the loopback
address), a worker killed in the middle of a run, two processes racing on one run, a failing job,
and worker processes that must not outlive their parent."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

import faeval
from faeval import store
from faeval.schedule import RunFailedError, dask_executor, fit_many

pytestmark = pytest.mark.slow

#: about 2 s of training each on one thread (measured: bp 1.8 s, dfa 2.2 s)
SLOW = dict(dataset="synthetic", d=32, n_train=16384, n_test=256, width=256, depth=2, eval_n=128, epochs=3)
CONFIGS = [dict(SLOW, method=m, seed=s) for m in ("bp", "dfa") for s in (0, 1)]


def _in_process(configs, results):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # as the workers (1 thread each): the same arithmetic
    try:
        return fit_many(configs, results=results, workers=1, progress=False)
    finally:
        torch.set_num_threads(threads)


def _assert_same_runs(a, b):
    for ra, rb in zip(a, b):
        assert ra.config == rb.config
        assert [r["test_acc"] for r in ra.history] == [r["test_acc"] for r in rb.history]
        for (n, p), q in zip(ra.model.state_dict().items(), rb.model.state_dict().values()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=n)


def _complete_entries(root: Path) -> list[Path]:
    """Every entry of the store, asserting that none is partial (a visible folder without all three files)."""
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    for p in entries:
        assert sorted(f.name for f in p.iterdir()) == ["checkpoint.pt", "config.json", "history.json"], p
    return entries


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _in_process(CONFIGS, tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as c, Client(c) as client:
        yield client


def test_fit_many_on_a_dask_cluster_equals_the_same_runs_in_process(cluster, reference, tmp_path):
    runs = fit_many(CONFIGS, results=tmp_path, executor=cluster.get_executor(), progress=False)
    assert len(_complete_entries(tmp_path)) == 4
    assert not any(r.from_cache for r in runs)
    _assert_same_runs(runs, reference)
    again = fit_many(CONFIGS, results=tmp_path, executor=cluster.get_executor(), progress=False)
    assert all(r.from_cache for r in again)           # stored runs are loaded, not sent


#: the layer-wise rules whose feedback is redrawn (brsf) or learns (kp, wm) after every step, and plain fa_layer
LAYERWISE = [dict(SLOW, n_train=2048, method=m, seed=0) for m in ("fa_layer", "brsf", "kp", "wm")]


def test_layerwise_rules_train_the_same_on_the_cluster_and_the_process_pool_and_reload(cluster, tmp_path):
    ref = _in_process(LAYERWISE, tmp_path / "ref")
    _assert_same_runs(fit_many(LAYERWISE, results=tmp_path / "dask", executor=cluster.get_executor(),
                               progress=False), ref)
    _assert_same_runs(fit_many(LAYERWISE, results=tmp_path / "pool", workers=2, progress=False), ref)
    x, y = torch.randn(64, 32, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 10
    for loaded, r in zip(fit_many(LAYERWISE, results=tmp_path / "pool", progress=False), ref):
        assert loaded.from_cache                  # the feedback matrices came back with the checkpoint
        for a, b in zip(loaded.method.aux_state()["feedback"], r.method.aux_state()["feedback"]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        if r.config["method"] != "brsf":          # (brsf redraws at every forward: its credit is a fresh draw)
            for a, b in zip(loaded.method.credit(x, y), r.method.credit(x, y)):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_a_worker_killed_in_the_middle_of_a_run_is_retried_and_leaves_no_partial_entry(cluster, reference,
                                                                                         tmp_path):
    pids = cluster.run(os.getpid)                      # worker address -> process id
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(runs=fit_many(CONFIGS, results=tmp_path, progress=False,
                                                                 executor=cluster.get_executor())))
    t.start()
    deadline = time.time() + 60
    busy = {}
    while time.time() < deadline and not busy:
        busy = {w: tasks for w, tasks in cluster.processing().items() if tasks}
        time.sleep(0.1)
    assert busy, "no task started on the cluster"
    time.sleep(0.5)                                    # well inside a 2 s run
    victim = next(iter(busy))
    assert not list(tmp_path.glob("*_s*_*")) or len(_complete_entries(tmp_path)) < 4
    os.kill(pids[victim], signal.SIGKILL)
    t.join(timeout=300)
    assert not t.is_alive() and "runs" in out
    assert len(_complete_entries(tmp_path)) == 4
    _assert_same_runs(out["runs"], reference)


def test_two_processes_training_the_same_run_leave_one_complete_entry(tmp_path):
    script = textwrap.dedent(f"""
        import faeval
        run = faeval.experiment(results={str(tmp_path)!r}, progress=False, **{dict(SLOW, method="dfa", seed=5)!r})
        print(run.test_acc)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    (entry,) = _complete_entries(tmp_path)
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".old-*"))
    loaded = store.load_run(entry)
    assert {float(o) for o, _ in outs} == {loaded.test_acc}     # both trained the same run; one entry stays


def test_a_failing_job_is_reported_with_its_config_and_the_others_are_stored(tmp_path):
    @faeval.register_method("fails_test")
    class Fails(faeval.methods.bp.BP):
        def loss(self, x, y):
            raise FloatingPointError("made to fail")

    try:
        small = dict(dataset="synthetic", d=8, n_train=256, n_test=64, width=8, depth=1, eval_n=64, epochs=1)
        cfgs = [dict(small, method="bp", seed=0), dict(small, method="fails_test", seed=3, width=16),
                dict(small, method="dfa", seed=0)]
        with pytest.raises(RunFailedError, match=r"1 of 3 runs failed \(the others are stored\):\n  fails_test on "
                                                 r"resmlp, synthetic, seed 3, 1 epochs \(.*width=16.*\): "
                                                 r"FloatingPointError: made to fail") as err:
            fit_many(cfgs, results=tmp_path, workers=1, progress=False)
        assert err.value.failures[0][0]["seed"] == 3
        assert len(_complete_entries(tmp_path)) == 2
    finally:
        faeval.METHODS.pop("fails_test")


def test_a_failing_job_on_the_cluster_is_reported_and_the_others_are_stored(cluster, tmp_path):
    bad = dict(SLOW, method="dfa", seed=0, epochs=1, lr=1e6)        # diverges: trains, stops, is stored
    missing = dict(SLOW, method="bp", seed=0, epochs=1, dataset="cifar10", d=None, n_train=None, n_test=None)
    missing = {k: v for k, v in missing.items() if v is not None}
    with pytest.raises(RunFailedError, match=r"(?s)1 of 2 runs failed.*bp on resmlp, cifar10, seed 0.*"
                                             r"FileNotFoundError: cifar10: could not find"):
        fit_many([bad, missing], results=tmp_path, executor=cluster.get_executor(), progress=False,
                 data_root=str(tmp_path / "no-data-here"))
    (entry,) = _complete_entries(tmp_path)
    assert store.load_run(entry).stopped.startswith("non-finite")


def test_an_unreachable_scheduler_is_named_within_seconds():
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match=r"no Dask scheduler answered at 'tcp://127\.0\.0\.1:9' within 2 s"):
        dask_executor("tcp://127.0.0.1:9", timeout=2)
    assert time.perf_counter() - start < 10


def test_prepare_with_an_unreachable_scheduler_says_so_and_trains_nothing(tmp_path):
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "faeval.book", "prepare", "--profile", "smoke", "--quiet", "--results",
                        str(tmp_path), "--scheduler", "tcp://127.0.0.1:9"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "error: no Dask scheduler answered at 'tcp://127.0.0.1:9' within 5 s" in r.stderr
    assert time.perf_counter() - start < 60 and list(tmp_path.iterdir()) == []


def test_without_dask_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)          # import distributed -> ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[cluster\]'"):
        dask_executor("tcp://127.0.0.1:8786")


def _spawned_children(pid: int) -> list[int]:
    """The pool worker processes (multiprocessing's spawn_main) whose parent is ``pid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and "spawn_main" in cmd:
            out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
@pytest.mark.parametrize("how", ["SIGTERM to `python -m faeval`-style parent", "SIGKILL"])
def test_workers_stop_when_their_parent_is_stopped_and_store_nothing(tmp_path, how):
    long = dict(SLOW, epochs=40)
    script = textwrap.dedent(f"""
        import faeval
        from faeval.schedule import exit_on_sigterm
        exit_on_sigterm()
        faeval.fit_many([dict({long!r}, method="bp", seed=s) for s in (0, 1)], results={str(tmp_path)!r},
                        workers=2, progress=False)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        workers: list[int] = []
        while time.time() < deadline and len(workers) < 2:
            workers = _spawned_children(parent.pid)
            time.sleep(0.2)
        assert len(workers) == 2, "the pool's two workers did not start"
        time.sleep(4)                                   # they have imported faeval and are training
        assert all(_alive(w) for w in workers)
        parent.send_signal(signal.SIGTERM if how.startswith("SIGTERM") else signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.time() + 5
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), f"workers still alive 5 s after {how}"
        assert _complete_entries(tmp_path) == []
    finally:
        if parent.poll() is None:
            parent.kill()
        for w in _spawned_children(parent.pid):
            os.kill(w, signal.SIGKILL)
