"""Rules and architectures defined outside the package: keyed by their code, shipped to every worker.

The bug this guards against: a rule edited in a notebook cell returned the stored runs of its old
version (the store keyed runs by the rule's name), and a rule defined in a cell failed in the
worker processes (they import faeval afresh). The last test runs the way a reader does: in a real
Jupyter kernel, with two worker processes and a Dask LocalCluster.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import faeval
from faeval import config, store
from faeval.book.profiles import get_profile
from faeval.methods.dfa import DFA
from faeval.schedule import install, ship
from faeval.usercode import RegisteredAgainWarning, fingerprint

SMALL = dict(dataset="synthetic", d=16, n_train=512, n_test=64, width=16, depth=2, eval_n=64, epochs=1)


def _register(name: str, scale: float):
    """A DFA variant whose credit is ``scale`` times DFA's, registered as ``name`` (one 'version' of a cell)."""
    @faeval.register_method(name)
    class Scaled(DFA):
        def local_credit(self, states, logits, y, top_grad):
            return [scale * a for a in super().local_credit(states, logits, y, top_grad)]
    return Scaled


@pytest.fixture
def registered():
    names = []

    def reg(name, scale):
        names.append(name)
        return _register(name, scale)
    yield reg
    for n in names:
        faeval.METHODS.pop(n, None)


def test_the_packages_rules_and_architectures_keep_their_keys():
    # every rule and architecture registered by importing faeval (a fresh process: none of a test's) is its own
    script = ("import faeval\nfrom faeval.usercode import fingerprint\n"
              "print(sorted(n for n, c in (*faeval.METHODS.items(), *faeval.ARCHS.items()) if fingerprint(c)))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
    for cfg in get_profile("quick").planned_runs():
        assert "code" not in cfg
    cfg = config.canonical_config(method="dfa", **SMALL)
    assert "code" not in cfg and config.canonical_config(**cfg) == cfg


def test_a_rule_defined_outside_the_package_is_keyed_by_its_code(registered):
    a = registered("scaled_test", 0.5)
    cfg = config.canonical_config(method="scaled_test", **SMALL)
    assert cfg["code"] == {"method": fingerprint(a)} and len(fingerprint(a)) == 16
    # the same code defined again (a cell re-run): the same key
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registered("scaled_test", 0.5)
    assert config.canonical_config(method="scaled_test", **SMALL) == cfg
    # edited: another key, even when an old canonical config is passed back in
    with pytest.warns(RegisteredAgainWarning, match=r"method 'scaled_test' is registered again with different code"):
        b = registered("scaled_test", 0.25)
    assert fingerprint(b) != fingerprint(a)
    again = config.canonical_config(**cfg)
    assert again["code"] == {"method": fingerprint(b)} and config.config_hash(again) != config.config_hash(cfg)


def test_a_helper_the_rule_calls_is_part_of_its_fingerprint():
    ns: dict = {"__name__": "cells"}
    rule = """
from faeval.methods.dfa import DFA
def shrink(a):
    return a * {k}
class Shrunk(DFA):
    def local_credit(self, *args):
        return [shrink(a) for a in super().local_credit(*args)]
"""
    exec(textwrap.dedent(rule.format(k=0.5)), ns)
    first = fingerprint(ns["Shrunk"])
    exec(textwrap.dedent("\n\n\n" + rule.format(k=0.5)), ns)       # moved down the page: the same code
    assert fingerprint(ns["Shrunk"]) == first
    exec(textwrap.dedent(rule.format(k=0.25)), ns)                  # only the helper changed
    assert fingerprint(ns["Shrunk"]) != first


def test_an_edited_rule_trains_anew_and_the_old_runs_stay_listed(registered, tmp_path, capsys):
    registered("scaled_test", 1.0)
    old = faeval.experiment(method="scaled_test", seed=1, results=tmp_path, progress=False, **SMALL)
    with pytest.warns(RegisteredAgainWarning):
        registered("scaled_test", 0.0)                               # no credit reaches the blocks any more
    new = faeval.experiment(method="scaled_test", seed=1, results=tmp_path, progress=False, **SMALL)
    assert not new.from_cache and new.path != old.path
    assert new.final["diag"].hidden_norms != old.final["diag"].hidden_norms
    blocks_old = old.model.blocks.state_dict()
    blocks_init = faeval.build_model("resmlp", (16,), 10, seed=1, width=16, depth=2).blocks.state_dict()
    for k, v in new.model.blocks.state_dict().items():       # zero credit: only weight decay moved the blocks
        assert (v - blocks_init[k]).abs().max() < (blocks_old[k] - blocks_init[k]).abs().max() + 1e-12
    rows = [r for r in store.list_runs(tmp_path) if r["method"] == "scaled_test"]
    assert len(rows) == 2 and len({r["user_code"] for r in rows}) == 2
    assert all(r["user_code"].startswith("method ") for r in rows)      # the architecture is faeval's own
    from faeval.__main__ import main
    assert main(["runs", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header, *lines = out.splitlines()
    assert "user_code" in header and sum(f"method {r['user_code'][7:]}" in line for r in rows for line in lines) == 2
    # loading the old run under the new code says whose weights they are
    with pytest.warns(RegisteredAgainWarning, match=r"is not the code that trained this run"):
        store.load_run(old.path)


def test_shipped_classes_register_in_a_fresh_process(registered, tmp_path):
    registered("scaled_test", 0.5)
    cfg = config.canonical_config(method="scaled_test", **SMALL)
    blob = ship([cfg])
    assert ship([config.canonical_config(method="dfa", **SMALL)]) is None
    script = textwrap.dedent(f"""
        import sys, faeval
        from faeval.schedule import install
        from faeval.usercode import fingerprint
        assert "scaled_test" not in faeval.METHODS
        install(open({str(tmp_path / 'blob')!r}, 'rb').read())
        print(fingerprint(faeval.METHODS["scaled_test"]))
    """)
    (tmp_path / "blob").write_bytes(blob)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # _register's class is local to a function: cloudpickle sends it by value, and it arrives the same code
    assert out.stdout.strip() == cfg["code"]["method"]
    install(None)


def test_a_rule_of_a_module_that_faeval_does_not_import_reaches_a_fresh_worker(tmp_path):
    """The book's probe rules are faeval's own (keyed by name alone) but ``import faeval`` does not register
    them: they travel to a worker by reference, and unpickling there imports their module."""
    import faeval.book.probe_rules  # noqa: F401  (registers dfa_input_credit)

    cfg = config.canonical_config(method="dfa_input_credit", **SMALL)
    assert not cfg.get("code") and fingerprint(faeval.METHODS["dfa_input_credit"]) is None
    (tmp_path / "blob").write_bytes(ship([cfg]))
    script = textwrap.dedent(f"""
        import faeval
        from faeval.schedule import install
        assert "dfa_input_credit" not in faeval.METHODS
        install(open({str(tmp_path / 'blob')!r}, 'rb').read())
        print(faeval.METHODS["dfa_input_credit"].__module__)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "faeval.book.probe_rules"


@pytest.mark.slow
def test_a_rule_and_an_architecture_defined_in_a_kernel_train_in_workers_and_on_dask(tmp_path):
    """As a reader does: cells of a real Jupyter kernel define a rule and an architecture; two worker
    processes and a Dask LocalCluster train them; the rule is edited and re-run."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("distributed")
    cells = [
        f"""
import warnings, torch, faeval
from torch import nn
from faeval.methods.dfa import DFA
RESULTS = {str(tmp_path)!r}
SMALL = dict(dataset="synthetic", d=16, n_train=1024, n_test=64, eval_n=64, epochs=2, width=16, depth=2)
""",
        """
@faeval.register_method("cell_rule")
class CellRule(DFA):
    def local_credit(self, states, logits, y, top_grad):
        return [2.0 * a for a in super().local_credit(states, logits, y, top_grad)]


class CellNet(nn.Module):                     # the forward adds each block's output (the skip is the model's)
    def __init__(self, d_in, d, depth, classes):
        super().__init__()
        self.stem = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU()) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, x):
        h = self.stem(x)
        for b in self.blocks:
            h = h + b(h)
        return self.head(self.norm(h))


@faeval.register_arch("cell_net")
class CellArch(faeval.Layered):
    def __init__(self, input_shape, num_classes, width=16, depth=2):
        super().__init__(CellNet(input_shape[0], width, depth, num_classes), embed="stem",
                         blocks=[f"blocks.{i}" for i in range(depth)], readout=["norm", "head"],
                         input_shape=input_shape)


cfgs = [dict(SMALL, method="cell_rule", arch="cell_net", seed=s) for s in (0, 1)]
""",
        """
def show(tag, runs):
    print(tag, [[r.from_cache, r.test_acc, str(r.path), r.final["diag"].hidden_norms[-1]] for r in runs])

show("POOL", faeval.fit_many(cfgs, results=RESULTS + "/pool", workers=2, progress=False))
""",
        """
from distributed import Client, LocalCluster
with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                  dashboard_address=None) as c, Client(c) as client:
    show("DASK", faeval.fit_many(cfgs, results=RESULTS + "/dask", executor=client.get_executor(),
                                 progress=False))
""",
        """
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")

    @faeval.register_method("cell_rule")
    class CellRule(DFA):                        # edited: no credit reaches the blocks
        def local_credit(self, states, logits, y, top_grad):
            return [0.0 * a for a in super().local_credit(states, logits, y, top_grad)]

    show("EDITED", faeval.fit_many(cfgs, results=RESULTS + "/pool", workers=2, progress=False))
print("WARNINGS", [str(w.message) for w in caught if issubclass(w.category, faeval.usercode.RegisteredAgainWarning)])
""",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(textwrap.dedent(c)) for c in cells])
    kernels = tmp_path / "jupyter" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "faeval test", "language": "python"}))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(tmp_path / "jupyter")
    try:
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=600).execute()
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH")
        else:
            os.environ["JUPYTER_PATH"] = old
    printed = {}
    for cell in nb.cells:
        for o in cell.outputs:
            for line in o.get("text", "").splitlines():
                tag, _, rest = line.partition(" ")
                if tag in ("POOL", "DASK", "EDITED", "WARNINGS"):
                    printed[tag] = eval(rest)
    pool, dask, edited = printed["POOL"], printed["DASK"], printed["EDITED"]
    assert [r[0] for r in pool + dask + edited] == [False] * 6            # each trained, none loaded
    # the same code and seeds on the cluster's workers: the same numbers as in the pool's workers
    assert [r[1::2] for r in dask] == [r[1::2] for r in pool]
    # the edited rule: new entries beside the old ones, other results (the final ||h_L||)
    assert {r[2] for r in edited}.isdisjoint(r[2] for r in pool)
    assert all(e[3] != p[3] for e, p in zip(edited, pool))
    assert len([p for p in (tmp_path / "pool").iterdir() if not p.name.startswith(".")]) == 4
    (warning,) = printed["WARNINGS"]
    assert "method 'cell_rule' is registered again with different code" in warning
    rows = store.list_runs(tmp_path / "pool")
    codes = [dict(part.split(" ") for part in r["user_code"].split(", ")) for r in rows]
    assert len({c["method"] for c in codes}) == 2 and len({c["arch"] for c in codes}) == 1   # two versions of the rule
    assert torch.isfinite(torch.tensor([r[1] for r in pool + edited])).all()


def test_a_rule_that_cannot_be_sent_to_a_worker_trains_here_and_the_log_says_why(tmp_path, caplog):
    import threading

    @faeval.register_method("unsendable_test")
    class Unsendable(DFA):
        lock = threading.Lock()           # cloudpickle cannot serialise a lock

    try:
        cfgs = [dict(SMALL, method="unsendable_test", seed=s) for s in (0, 1)]
        with caplog.at_level("WARNING", logger="faeval"):
            runs = faeval.fit_many(cfgs, results=tmp_path, workers=2, progress=False)
        assert [r.from_cache for r in runs] == [False, False]
        said = [r.getMessage() for r in caplog.records if "cannot be sent to a worker" in r.getMessage()]
        assert len(said) == 2 and "unsendable_test on resmlp, synthetic, seed 0" in said[0]
    finally:
        faeval.METHODS.pop("unsendable_test", None)
