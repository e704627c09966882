"""Execute the source notebooks with papermill into the book's executed folder.

    python scripts/run_notebooks.py --profile quick            # what `make book` runs
    python scripts/run_notebooks.py --profile smoke --out /tmp/x
    python scripts/run_notebooks.py -p seeds '[42]' --only '02_*'

Notebooks run one at a time, in sorted file-name order, each with the notebook's
own folder as working directory (as when it is opened in Jupyter) and with the
interpreter that runs this script as its kernel. Every notebook receives
``profile`` plus any ``-p NAME VALUE`` / ``-y YAML`` parameters.

In each executed copy the ``parameters`` cell and the ``injected-parameters``
cell that papermill adds get the ``remove-cell`` tag, so the book shows neither
(``remove-input`` would still show any output they print). The notebook itself
is expected to display what it resolved from its parameters.

Exit status: 0 when every notebook ran (also when there is none), 1 when a
notebook failed (its name is printed; papermill leaves the partly executed copy,
traceback included, at the output path), 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import atexit
import fnmatch
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HIDE_TAG = "remove-cell"
PARAM_TAGS = ("parameters", "injected-parameters")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="quick", help="value of the `profile` parameter (default: quick)")
    ap.add_argument("--src", type=Path, default=ROOT / "notebooks", help="folder of source notebooks")
    ap.add_argument("--out", type=Path, default=ROOT / "book" / "executed", help="folder for executed copies")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="extra parameter; VALUE is read as YAML (42, 1e-3, true, '[42, 123]', text)")
    ap.add_argument("-y", "--yaml", action="append", default=[], metavar="YAML",
                    help="extra parameters as a YAML mapping, e.g. -y 'seeds: [42]'")
    ap.add_argument("--only", action="append", default=[], metavar="GLOB",
                    help="run only notebooks whose file name matches (repeatable); others are left alone")
    ap.add_argument("--keep-going", action="store_true",
                    help="after a failure, run the remaining notebooks before exiting non-zero")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default: none)")
    return ap.parse_args(argv)


def build_parameters(args: argparse.Namespace) -> dict:
    import yaml

    params: dict = {"profile": args.profile}
    for text in args.yaml:
        value = yaml.safe_load(text)
        if not isinstance(value, dict):
            raise SystemExit(f"-y {text!r}: expected a YAML mapping such as 'seeds: [42]'")
        params.update(value)
    for name, value in args.parameter:
        params[name] = yaml.safe_load(value)
    return params


def own_kernel_dir() -> str:
    """A jupyter data folder whose `python3` kernel is this interpreter.

    A `python3` kernelspec installed elsewhere (user or system wide) could point
    at another Python that lacks faeval; JUPYTER_PATH is searched before those.
    """
    data_dir = tempfile.mkdtemp(prefix="faeval-kernel-")
    spec_dir = Path(data_dir, "kernels", "python3")
    spec_dir.mkdir(parents=True)
    spec = {
        # figures as SVG: sharp at any zoom, and their text keeps its size (faeval.book.plots)
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--InlineBackend.figure_formats=svg"],
        "display_name": "Python 3 (faeval)",
        "language": "python",
        "metadata": {"debugger": False},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return data_dir


def ipc_kernel_manager():
    """A kernel manager whose kernels talk over Unix-domain sockets (IPC) in a private folder.

    Over TCP, ipykernel warns on every start that the loopback traffic is not encrypted;
    IPC sockets are files only this user can open, so there is nothing to warn about and
    the build log stays quiet.
    """
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            super().__init__(**kw)
            folder = tempfile.mkdtemp(prefix="faeval-ipc-")
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            self.transport = "ipc"
            self.ip = str(Path(folder) / "kernel")

    return IPCKernelManager


def hide_parameter_cells(path: Path) -> int:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    hidden = 0
    for cell in nb.cells:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if any(t in tags for t in PARAM_TAGS) and HIDE_TAG not in tags:
            tags.append(HIDE_TAG)
            hidden += 1
    nbformat.write(nb, path)
    return hidden


def remove_stale(src: Path, out: Path) -> None:
    """Delete the executed copies in ``out`` whose source notebook is gone from ``src`` (they would otherwise
    linger in the book)."""
    for stale in sorted(out.glob("*.ipynb")) if out.is_dir() else []:
        if not (src / stale.name).exists():
            print(f"removing {stale.relative_to(ROOT) if stale.is_relative_to(ROOT) else stale}: "
                  "its source notebook is gone")
            stale.unlink()


def error_summary(err: BaseException) -> str:
    ename = getattr(err, "ename", None)
    if ename:  # papermill.PapermillExecutionError
        return f"{ename}: {getattr(err, 'evalue', '')} (cell {getattr(err, 'exec_count', '?')})"
    return f"{type(err).__name__}: {err}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    src, out = args.src.resolve(), args.out.resolve()
    if src.is_file():         # refused before the stale-copy sweep, which would empty --out against a file
        print(f"--src {args.src}: not a folder of notebooks; to run one notebook, give its folder and "
              f"--only {src.name}", file=sys.stderr)
        return 2
    sources = sorted(src.glob("*.ipynb")) if src.is_dir() else []
    if not args.only:
        remove_stale(src, out)
    else:
        sources = [p for p in sources if any(fnmatch.fnmatch(p.name, g) for g in args.only)]
    if not sources:
        where = src.relative_to(ROOT) if src.is_relative_to(ROOT) else src
        print(f"no notebook in {where}/" + (f" matches {args.only}" if args.only else "")
              + ": nothing to execute")
        return 0

    params = build_parameters(args)
    # notebooks run with notebooks/ as working directory: point the run store at the checkout's results/
    # (a results_dir parameter or $FAEVAL_RESULTS set by the caller wins)
    os.environ.setdefault("FAEVAL_RESULTS", str(ROOT / "results"))
    # progress bars would fill the rendered pages with hundreds of lines; the runner prints its own progress
    os.environ.setdefault("FAEVAL_PROGRESS", "0")
    print(f"run store: {params.get('results_dir') or os.environ['FAEVAL_RESULTS']}", flush=True)
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        [own_kernel_dir()] + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p])
    # the kernel's own default (inline figures) must win over a user's MPLBACKEND=Agg
    os.environ.pop("MPLBACKEND", None)
    import papermill as pm

    out.mkdir(parents=True, exist_ok=True)
    print(f"executing {len(sources)} notebook(s) with parameters {params}", flush=True)
    timings: list[tuple[str, float, str]] = []
    failed: list[str] = []
    t_all = time.perf_counter()
    for i, nb_src in enumerate(sources, 1):
        nb_out = out / nb_src.name
        shown = nb_src.relative_to(ROOT) if nb_src.is_relative_to(ROOT) else nb_src
        print(f"[{i}/{len(sources)}] {shown} ...", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(
                str(nb_src), str(nb_out), parameters=params, kernel_name="python3",
                cwd=str(nb_src.parent), progress_bar=False, log_output=False,
                execution_timeout=args.timeout, kernel_manager_class=ipc_kernel_manager(),
                # every output is in by then: a graceful shutdown that times out interrupts the
                # kernel, which prints "KeyboardInterrupt caught in kernel" into the build log
                shutdown_kernel="immediate",
            )
        except Exception as err:  # noqa: BLE001 - report any failure with the notebook's name
            dt = time.perf_counter() - t0
            print(f"[{i}/{len(sources)}] FAILED {shown} after {dt:.1f} s: {error_summary(err)}", flush=True)
            print(f"    partly executed copy with the traceback: {nb_out}", flush=True)
            timings.append((str(shown), dt, "FAILED"))
            failed.append(str(shown))
            if not args.keep_going:
                break
            continue
        hide_parameter_cells(nb_out)
        dt = time.perf_counter() - t0
        timings.append((str(shown), dt, "ok"))
        print(f"[{i}/{len(sources)}] ok {shown} in {dt:.1f} s", flush=True)

    total = time.perf_counter() - t_all
    width = max(len(name) for name, _, _ in timings)
    print("\nseconds per notebook:")
    for name, dt, status in timings:
        print(f"  {name:<{width}}  {dt:8.1f}  {status}")
    print(f"  {'total':<{width}}  {total:8.1f}")
    if failed:
        skipped = len(sources) - len(timings)
        print(f"\nnotebook(s) failed: {', '.join(failed)}"
              + (f" ({skipped} not run; use --keep-going to run them anyway)" if skipped else ""),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
