"""The docs match the code: every docstring example in faeval runs and prints what it shows, the
README's Python examples run, and the package cites the book, not a file that users do not have."""
from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import faeval

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name for m in pkgutil.walk_packages(faeval.__path__, "faeval.") if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (run: python -m doctest)"


def test_the_package_has_docstring_examples_where_a_reader_starts():
    finder = doctest.DocTestFinder()
    with_examples = {name for name in MODULES
                     if any(t.examples for t in finder.find(importlib.import_module(name)))}
    for name in ("faeval.models", "faeval.methods.base", "faeval.config", "faeval.schedule", "faeval.protocol",
                 "faeval.diagnostics", "faeval.book.experiments", "faeval.book.profiles", "faeval.book.claims"):
        assert name in with_examples, f"{name} has no runnable example"


def test_no_example_hides_in_a_literal_block():
    """A ``::`` block of code is never run; examples are written as ``>>>`` lines instead."""
    for path in sorted((ROOT / "faeval").rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"::\n\n((?: {4,}.*\n|\n)+)", text):
            assert not re.search(r"\w+\(", m.group(1)), f"{path.name}: a code example outside doctest:\n{m.group(1)}"


def test_the_package_cites_the_book_not_the_spec_file():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "faeval").rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\bSPEC\b", line)]
    assert not hits, f"citations of SPEC (a file users do not have): {hits}"


def test_no_measured_timing_in_api_docstrings():
    """Timings belong in benchmarks/README.md with their date and machine."""
    pattern = re.compile(r"\d+(\.\d+)?\s?(ms|s)\b(?! of| per)|\d\.\d+x\b")
    for name in MODULES:
        module = importlib.import_module(name)
        for obj_name, obj in vars(module).items():
            doc = getattr(obj, "__doc__", None) if getattr(obj, "__module__", None) == name else None
            if doc:
                assert not pattern.search(doc), f"{name}.{obj_name}: a measured timing in its docstring"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    """The README's first example (the protocol on a random-init model) runs as written."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0].replace("subset=10_000", "subset=512"), "README.md", "exec"), {})


def test_every_public_name_of_the_package_resolves():
    """``faeval.X`` for every name of ``faeval.__all__`` (several load lazily, from the module named in the
    package root): a name left pointing at a module it moved out of would only fail for a user."""
    for name in faeval.__all__:
        assert getattr(faeval, name) is not None, name
    assert faeval.Snapshot.__module__ == "faeval.snapshot"
