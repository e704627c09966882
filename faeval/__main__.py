"""Command line: ``python -m faeval {train,runs,audit} --help``.

(The book's ``prepare``, which trains every run a profile's notebooks ask for, is ``python -m faeval.book
prepare``.)"""
from __future__ import annotations

import argparse
import json
import sys

# flag -> config key, for the options most runs set; anything else goes through --set key=value
_OPTIONS = [
    ("--arch", "arch", str, "architecture: {archs} (default resmlp)"),
    ("--method", "method", str, "learning rule: {methods} (default bp)"),
    ("--dataset", "dataset", str, "{datasets} (default fashion-mnist)"),
    ("--epochs", "epochs", int, "training epochs (default 1)"),
    ("--seed", "seed", int, "seed of weights, feedback matrices and batch order (default 0)"),
    ("--batch-size", "batch_size", int, "minibatch size (default 128)"),
    ("--lr", "lr", float, "AdamW learning rate of the model (default 1e-3)"),
    ("--lr-fb", "lr_fb", float, "AdamW learning rate of the rule's own networks (default 1e-3)"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay (default 0.01)"),
    ("--eval-n", "eval_n", int, "test samples in the per-epoch diagnostic snapshot (default 1280)"),
    ("--penalty", "penalty", float, "residual-branch penalty lambda (default 0)"),
    ("--trainable-blocks", "trainable_blocks", int, "train only the last k blocks (depth ladder)"),
    ("--head-lr", "head_lr", float, "out_head's learning rate as a multiple of --lr; 0 keeps it fixed (default 1)"),
    ("--beta", "beta", float, "EP nudging strength (default 0.1)"),
    ("--K", "K", int, "credit bridge: noisy successors (default 4)"),
    ("--width", "width", int, "model width d"),
    ("--depth", "depth", int, "number of blocks L"),
    ("--subset", "subset", int, "train on a seeded subset of this many samples"),
]


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _registered() -> dict[str, str]:
    """The registered names, for the help texts (the registries are the only lists)."""
    from .data import DATASETS
    from .methods import METHODS
    from .models import ARCHS

    return {"archs": ", ".join(ARCHS), "methods": ", ".join(METHODS), "datasets": ", ".join(DATASETS)}


def _train(args) -> int:
    from .store import experiment
    config = {key: getattr(args, key) for _, key, _, _ in _OPTIONS if getattr(args, key) is not None}
    for item in args.set or []:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. --set w2_std=0.5")
        k, v = item.split("=", 1)
        config[k.strip()] = _value(v)
    if args.stop_on:
        config["stop_on"] = args.stop_on
    run = experiment(results=args.results, retrain=args.retrain, progress=not args.quiet, device=args.device,
                     data_root=args.data_root, **config)
    if args.json:
        from .train import history_to_json
        print(json.dumps(history_to_json([run.final])[0]))
    else:
        print(("loaded from the store: " if run.from_cache else "") + str(run.path))
        print(run.summary())
    return 0


def _runs(args) -> int:
    from .store import list_runs, results_dir
    rows = list_runs(args.results)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print(f"no runs in {results_dir(args.results)}")
        return 0
    cols = ["method", "arch", "dataset", "seed", "options", "epochs", "test_acc", "max_growth", "g_L", "stopped",
            "user_code", "run"]

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else ("-" if v in (None, "") else str(v))
    table = [cols] + [[fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    stale = sum(not r["current"] for r in rows)
    if stale:
        print(f"({stale} run(s) from an older cache version: experiment() will retrain them)")
    return 0


def _audit(args) -> int:
    from .protocol import FAProtocol
    from .store import load_data, load_run
    run = load_run(args.run, device=args.device)
    ds = load_data(run.config, str(next(run.model.parameters()).device), args.data_root)
    x, y = ds.eval_batch(min(args.n_eval, ds.n_test))
    report = FAProtocol(run.model, x, y, headline_acc=run.test_acc).run(frozen_baseline_acc=args.frozen_acc)
    print(report.to_json(indent=1) if args.json else report)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faeval", description=(
        "faeval: train learning rules into the run store, list the store, and audit stored runs."))
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train one run (or load it from the store) and print its final record",
                        description="Train one run, or load it when the store already holds this exact config, "
                                    "and print its final history line.")
    from .protocol import per_epoch_diagnostics

    names = _registered()
    for flag, key, typ, helptext in _OPTIONS:
        tr.add_argument(flag, dest=key, type=typ, default=None, help=helptext.format(**names))
    tr.add_argument("--stop-on", nargs="+", choices=per_epoch_diagnostics(), help="stop when these diagnostics fire")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="any other option of the rule, model or dataset (value read as JSON), e.g. w2_std=0.5")
    tr.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    tr.add_argument("--retrain", action="store_true", help="train again even if the store holds this run")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.add_argument("--json", action="store_true", help="print the final history record as JSON")
    tr.set_defaults(func=_train)

    ls = sub.add_parser("runs", help="list the runs in the store",
                        description="List the runs in the store. user_code: the fingerprint of the code of a "
                                    "rule or architecture defined outside faeval that trained the run.")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=_runs)

    au = sub.add_parser("audit", help="run the protocol (D1, D2, C, D3) on a stored run",
                        description="Run FAProtocol on a stored run's model, on the first --n-eval test samples.")
    au.add_argument("run", help="the run's directory (see `python -m faeval runs`)")
    au.add_argument("--frozen-acc", type=float, default=None,
                    help="accuracy of the frozen-blocks baseline (D3 is not judged without it)")
    au.add_argument("--n-eval", type=int, default=1280, help="eval samples (default 1280)")
    au.add_argument("--device", help="cpu, cuda, ...")
    au.add_argument("--json", action="store_true", help="print the report as JSON")
    au.set_defaults(func=_audit)

    for p in (tr, ls, au):
        p.add_argument("--results", help="the store's directory (default $FAEVAL_RESULTS or ./results)")
    for p in (tr, au):
        p.add_argument("--data-root", help="directory holding the dataset files")

    if (argv if argv is not None else sys.argv[1:])[:1] == ["prepare"]:
        parser.error("prepare is the book's command: python -m faeval.book prepare (--help lists its options)")
    return dispatch(parser.parse_args(argv))


def dispatch(args) -> int:
    """Run a parsed command (``args.func``); a bad input prints ``error: ...`` and returns 2, failed runs 1."""
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from .schedule import RunFailedError

        if not isinstance(e, RunFailedError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
