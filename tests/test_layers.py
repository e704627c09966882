"""Two packages, one direction: the library (``faeval``) never imports the book's machinery (``faeval.book``)
nor the book extra's packages, its modules keep their layers, and it installs and runs with its own
dependencies alone. The contracts are import-linter's, declared in pyproject.toml."""
from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import faeval

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
#: what only the book extra (or Jupyter) installs: the library must load none of it
BOOK_ONLY = ("pandas", "matplotlib", "seaborn", "papermill", "IPython", "jupyter_book", "nbformat", "nbclient",
             "scipy", "faeval.book")


def _contracts() -> dict[str, dict]:
    tomllib = pytest.importorskip("tomllib")     # Python 3.11+ (the contracts themselves run on any)
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def _library_modules() -> set[str]:
    """The library's top-level modules and subpackages (``faeval.methods`` stands for its files)."""
    return {m.name for m in pkgutil.iter_modules(faeval.__path__, "faeval.")} - {"faeval.book"}


def _lint(cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(cwd / "pyproject.toml")], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


def test_the_import_contracts_hold():
    proc = _lint(ROOT)
    print(proc.stdout[proc.stdout.index("Contracts"):] if "Contracts" in proc.stdout else proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in proc.stdout


def test_every_library_module_is_under_both_contracts():
    """A new module of the library is listed in the forbidden contract's sources and in one layer, so that it
    cannot import the book unseen."""
    contracts = _contracts()
    sources = set(contracts["library-not-book"]["source_modules"])
    layered = {f"faeval.{name.strip()}" for layer in contracts["library-layers"]["layers"]
               for name in layer.split("|")}
    library = _library_modules()
    assert library - sources == set(), "add to the forbidden contract's source_modules in pyproject.toml"
    assert contracts["root-not-book"]["source_modules"] == ["faeval"]
    assert library - layered == set(), "add to a layer of the layers contract in pyproject.toml"
    assert layered - library == {"faeval.book"}


def test_the_contracts_catch_the_library_importing_the_book(tmp_path):
    """The same contracts on a copy of the package in which the run store and the package root import the
    book's plots (inside a function, as a lazy import would): every contract breaks."""
    shutil.copytree(ROOT / "faeval", tmp_path / "faeval", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for name in ("store.py", "__init__.py"):
        path = tmp_path / "faeval" / name
        path.write_text(path.read_text() + "\n\ndef _figure():\n    from .book import plots\n    return plots\n")
    proc = _lint(tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "faeval.store -> faeval.book.plots" in proc.stdout and "faeval -> faeval.book.plots" in proc.stdout
    assert f"Contracts: 0 kept, {len(_contracts())} broken." in proc.stdout


def test_importing_the_library_loads_nothing_of_the_book():
    """Every library module imported in a fresh process: the third-party packages it loaded are torch's,
    numpy, tqdm and cloudpickle, and nothing of the book."""
    code = ("import sys, faeval, faeval.__main__\n"
            + "".join(f"import {m}\n" for m in sorted(_library_modules()))
            + "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] not in sys.stdlib_module_names)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = proc.stdout.split()
    tops = sorted({m.split(".")[0] for m in loaded if not m.startswith("_")})
    print("third-party packages the library loads:", tops)
    assert not [m for m in loaded if m.split(".")[0] in BOOK_ONLY or m.startswith("faeval.book")]
    assert set(tops) <= {"faeval", "torch", "torchgen", "numpy", "tqdm", "cloudpickle", "typing_extensions",
                         "sympy", "mpmath", "filelock", "fsspec", "jinja2", "markupsafe", "networkx"}, tops


def test_the_book_without_its_extra_says_which_extra_to_install():
    code = "import sys\nsys.modules['pandas'] = None\nimport faeval\nimport faeval.book"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "ImportError: faeval.book needs the 'book' extra, and pandas cannot be imported" in proc.stderr
    assert "pip install 'faeval[book]'" in proc.stderr


def test_a_name_that_moved_to_the_book_says_where_it_went():
    with pytest.raises(AttributeError, match=r"import faeval.book as fb`, then fb.get_profile"):
        faeval.get_profile  # noqa: B018


@pytest.mark.slow
def test_the_library_installs_and_trains_with_its_own_dependencies_alone(tmp_path):
    """``pip install faeval`` (no extras) into a new environment: it trains a rule into the store and audits
    it; ``faeval.book`` then names its missing extra. (Needs pip to reach the package index.)"""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(ROOT / "faeval", src / "faeval", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    torch_spec = os.environ.get("TORCH_SPEC", "torch==2.13.0")       # the Makefile's: the CPU wheel, first
    for args in ([torch_spec], [str(src)]):
        proc = subprocess.run([str(py), "-m", "pip", "install", "-q", *args], capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                            check=True).stdout
    installed = {line.split("==")[0].lower() for line in listed.split()}
    print("installed:", sorted(installed))
    assert not installed & {"pandas", "matplotlib", "seaborn", "papermill", "scipy", "jupyter-book", "ipython"}
    script = f"""
import faeval
run = faeval.experiment(method="dfa", dataset="synthetic", n_train=256, n_test=64, d=16, width=16, depth=2,
                        eval_n=64, epochs=1, results={str(tmp_path / 'store')!r}, progress=False)
x, y = faeval.load_dataset("synthetic", n_train=256, n_test=64, d=16).eval_batch(64)
print(run.final.epoch, faeval.FAProtocol(run.model, x, y).run().verdict)
try:
    import faeval.book
except ImportError as e:
    print(e)
"""
    proc = subprocess.run([str(py), "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()[:2]
    assert first.startswith("1 ") and ("PASS" in first or "FAIL" in first), proc.stdout
    assert second.startswith("faeval.book needs the 'book' extra"), proc.stdout
