"""Build the book in two renders: the first chapters as soon as their runs are stored, then all of it.

    python scripts/build_book.py --profile quick               # what `make book` runs
    python scripts/build_book.py --profile smoke --phase first # only the first render
    python scripts/build_book.py --profile smoke --phase rest  # complete a first render

A cold quick build trains for hours on a small CPU. Rather than make a reader wait for
all of it, the default (``--phase all``) renders twice:

1. ``first``: train the runs of the FIRST notebooks (the quick start, the audit, the
   temporal chapter and the pitfalls: what the protocol needs) and of the judged head
   regime's rule (the head grid, FA vs DFA and the head mechanism); execute every notebook
   whose runs are then all stored; give every other chapter a placeholder page that says
   it is still training; execute the ledger and the findings page with ``pending``
   naming those chapters (both then say "partial" and count only what is rendered);
   render the book and print its path and chapters.
2. ``rest``: train every run the book plans; execute the placeholder chapters, then the
   ledger and the findings page again, now complete; render again.

When the store already holds every planned run there is nothing to wait for: one
render, of every notebook. Each render prints how long after the build's start it came
(``--since``, the Unix time ``make book`` started; default: this script's start).

A notebook's chapters are read from its ``P.experiment("name")`` calls, plus those that the
rule picking the judged head regime reads (``faeval.book.head.DECISION_CHAPTERS``); the pages
whose name starts with ``99_`` gather the others and run last. Exit status: 0 when the book
was rendered, else that of the step that failed (its name is printed).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
#: the notebooks of the first render: their chapters' runs train first
FIRST = ("00_quickstart", "01_audit", "02_temporal", "06_pitfalls")
#: the pages that gather the others (the ledger, the findings): executed last, after every other notebook
GATHER = "99_"
#: the notebook metadata key that marks a placeholder page
PLACEHOLDER = "faeval_placeholder"
EXPERIMENT_CALL = re.compile(r"\bexperiment\(\\?[\"'](\w+)\\?[\"']\)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="quick", help="the profile (default: quick)")
    ap.add_argument("--phase", choices=("all", "first", "rest"), default="all",
                    help="all (default): a first render, then the whole book; first or rest: one of the two")
    ap.add_argument("--results", help="the run store (default $FAEVAL_RESULTS or ./results)")
    ap.add_argument("--scheduler", metavar="ADDRESS", help="train on the Dask scheduler at ADDRESS (see prepare)")
    ap.add_argument("--root", type=Path, default=ROOT,
                    help="the book's source folder (_toc.yml, book/; default: the checkout)")
    ap.add_argument("--src", type=Path, default=ROOT / "notebooks", help="folder of source notebooks")
    ap.add_argument("--since", type=float, default=None,
                    help="Unix time the build started, for the times it prints (default: now)")
    return ap.parse_args(argv)


def notebook_chapters(path: Path) -> list[str]:
    """The chapters whose runs notebook ``path`` loads: the names in its ``P.experiment("name")`` calls, and those
    of the rule that picks the judged head regime (read by nearly every chapter through the library)."""
    from faeval.book.head import DECISION_CHAPTERS

    return sorted(set(EXPERIMENT_CALL.findall(path.read_text(encoding="utf-8"))) | set(DECISION_CHAPTERS))


def title_of(path: Path) -> str:
    """The ``# title`` of a notebook's first markdown cell (else its file name)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return path.stem


def write_placeholder(src: Path, out: Path, runs_left: int) -> None:
    """An executed copy of ``src`` at ``out`` that holds only its title and a note: its runs are still training."""
    nb = json.loads(src.read_text(encoding="utf-8"))
    note = (f"# {title_of(src)}\n\n:::{{admonition}} Still training\n:class: note\n"
            f"This chapter's runs are still training ({runs_left} of them when this page was written). "
            "`make book` renders it once they are stored; until then the ledger and the findings page leave its "
            "claims out.\n:::\n")
    page = {"cells": [{"cell_type": "markdown", "id": "placeholder", "metadata": {}, "source": note}],
            "metadata": {**nb.get("metadata", {}), PLACEHOLDER: True}, "nbformat": 4,
            "nbformat_minor": max(5, nb.get("nbformat_minor", 5))}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(page, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out)


def is_placeholder(path: Path) -> bool:
    return json.loads(path.read_text(encoding="utf-8")).get("metadata", {}).get(PLACEHOLDER, False)


class Build:
    """The steps of a build, each a subprocess; a failing step ends the build with its exit status."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.start = args.since if args.since is not None else time.time()
        self.root, self.src = args.root.resolve(), args.src.resolve()
        self.out = self.root / "book" / "executed"
        self.results = args.results or os.environ.get("FAEVAL_RESULTS") or str(ROOT / "results")
        self.env = {**os.environ, "FAEVAL_RESULTS": self.results}
        self.sources = sorted(self.src.glob("*.ipynb"))
        self.seconds: dict[str, float] = {}

    def clock(self) -> str:
        s = int(time.time() - self.start)
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"

    def step(self, name: str, cmd: list) -> None:
        print(f"== {name} ({self.clock()} since the build started)", flush=True)
        t = time.perf_counter()
        code = subprocess.call([str(c) for c in cmd], env=self.env)
        kind = name.split(":")[0]                   # training, notebooks or render
        self.seconds[kind] = self.seconds.get(kind, 0.0) + time.perf_counter() - t
        if code:
            print(f"build_book: {name} failed (exit {code})", file=sys.stderr, flush=True)
            raise SystemExit(code)

    def prepare(self, chapters: list[str] | None) -> None:
        cmd = [sys.executable, "-m", "faeval.book", "prepare", "--profile", self.args.profile, "--results",
               self.results, *(["--chapters", ",".join(chapters)] if chapters else []),
               *(["--scheduler", self.args.scheduler] if self.args.scheduler else [])]
        self.step("training: " + (", ".join(chapters) if chapters else "every chapter"), cmd)

    def execute(self, names: list[str], pending: list[str] = ()) -> None:
        if not names:
            return
        cmd = [sys.executable, SCRIPTS / "run_notebooks.py", "--profile", self.args.profile, "--src", self.src,
               "--out", self.out, *[a for n in names for a in ("--only", f"{n}.ipynb")]]
        if pending:
            cmd += ["-y", "pending: " + json.dumps(list(pending))]
        self.step("notebooks: " + ", ".join(names), cmd)

    def render(self, label: str, pending: list[str]) -> None:
        toc = self.root / "_build" / "_toc.yml"
        self.step("render: book_toc", [sys.executable, SCRIPTS / "book_toc.py", "--toc", self.root / "_toc.yml",
                                       "--src", self.src, "--out", toc])
        exe = Path(sys.executable).with_name("jupyter-book")
        exe = str(exe) if exe.exists() else (shutil.which("jupyter-book") or "jupyter-book")
        self.step(f"render: jupyter-book build ({label})", [exe, "build", self.root, "--toc", toc, "--all", "-W",
                                                              "--keep-going"])
        chapters = [p.stem for p in self.sources if p.stem not in pending]
        times = ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())
        print(f"\n{label} at {self.clock()} after the build started ({times}); chapters rendered: "
              f"{', '.join(chapters)}" + (f"; still training: {', '.join(pending)}" if pending else ""))
        print(f"Book ({label}): {self.root / '_build' / 'html' / 'index.html'}\n", flush=True)

    def runs_left(self, chapters: list[str]) -> dict[str, int]:
        """``{chapter: runs not stored yet}`` of ``chapters`` at this build's profile."""
        from faeval.book.experiments import unstored
        from faeval.book.profiles import get_profile

        P = get_profile(self.args.profile, results_dir=self.results, progress=False)
        return {c: len(unstored(c, P)) for c in chapters}

    def notebooks(self) -> tuple[list[str], list[str]]:
        """The chapters' notebooks and the gathering pages, each in file-name order."""
        names = [p.stem for p in self.sources]
        return [n for n in names if not n.startswith(GATHER)], [n for n in names if n.startswith(GATHER)]

    def first(self) -> list[str]:
        """Train the first notebooks' chapters, execute what is ready, placeholders for the rest; render."""
        from run_notebooks import remove_stale

        chapters_of = {p.stem: notebook_chapters(p) for p in self.sources}
        missing = [n for n in FIRST if n not in chapters_of]
        if missing:
            raise SystemExit(f"build_book: FIRST names {missing}, which are not in {self.src}")
        self.prepare(sorted({c for n in FIRST for c in chapters_of[n]}))
        chapters, gather = self.notebooks()
        left = self.runs_left(sorted({c for n in chapters for c in chapters_of[n]}))
        ready = [n for n in chapters if not any(left[c] for c in chapters_of[n])]
        pending = [n for n in chapters if n not in ready]
        remove_stale(self.src, self.out)
        self.execute(ready)
        self.out.mkdir(parents=True, exist_ok=True)
        for n in pending:
            write_placeholder(self.src / f"{n}.ipynb", self.out / f"{n}.ipynb",
                              sum(left[c] for c in chapters_of[n]))
        self.execute(gather, pending)
        self.render("first render" if pending else "the book", pending)
        return pending

    def rest(self, everything: bool = False) -> None:
        """Train every run; execute the placeholder chapters (every chapter if ``everything``), then the
        gathering pages; render."""
        from run_notebooks import remove_stale

        self.prepare(None)
        chapters, gather = self.notebooks()
        todo = [n for n in chapters if everything or not (self.out / f"{n}.ipynb").exists()
                or is_placeholder(self.out / f"{n}.ipynb")]
        remove_stale(self.src, self.out)
        self.execute(todo + gather)
        self.render("the book", [])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(SCRIPTS))
    build = Build(args)
    if args.phase == "first":
        build.first()
    elif args.phase == "rest":
        build.rest()
    else:
        from faeval.book.profiles import get_profile
        from faeval.store import run_dir

        P = get_profile(args.profile, results_dir=build.results, progress=False)
        if all(run_dir(c, build.results).is_dir() for c in P.planned_runs()):
            print("build_book: every planned run is stored: one render of the whole book", flush=True)
            build.rest(everything=True)
        elif build.first():
            build.rest()
    return 0


if __name__ == "__main__":
    sys.exit(main())
