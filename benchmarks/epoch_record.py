"""The per-epoch record's share of a run: the test split, the snapshot and the drift, next to the epoch itself.

For each architecture of the quick profile's cross-architecture chapter whose record is costly (SmallCNN,
SmallResNet, ViT-Mini at the quick profile's options and training subsets), one 1-thread run of one epoch
(DFA) is timed twice, with the model's ``eval_channels_last`` off and on (``faeval.train.eval_layout``), and
prints the record's seconds and its share of a 4-epoch run (five records, four epochs), plus the test numbers of
both layouts. Run: .venv/bin/python benchmarks/epoch_record.py  (about 5 minutes)
"""
from __future__ import annotations

import time

import torch

import faeval

QUICK = {"cnn": ({}, 5000), "resnet": ({}, 5000), "vit": ({"width": 128}, 10000)}


def timed_run(arch: str, options: dict, subset: int, channels_last: bool):
    cls = faeval.models.arch_class(arch)
    before = cls.eval_channels_last
    cls.eval_channels_last = channels_last
    try:
        ds = faeval.load_dataset("fashion-mnist", subset=subset, seed=0)
        model = faeval.build_model(arch, ds.input_shape, 10, seed=0, **options)
        start = time.perf_counter()
        run = faeval.fit(model, "dfa", ds, 1, seed=0, progress=False)
        total = time.perf_counter() - start
    finally:
        cls.eval_channels_last = before
    epoch = run.history[-1].seconds
    return (total - epoch) / 2, epoch, run.history[-1]


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'arch':8} {'layout':13} {'record s':>9} {'epoch s':>8} {'share (4 ep)':>13}  test loss, acc")
    for arch, (options, subset) in QUICK.items():
        for cl in (False, True):
            rec, epoch, last = timed_run(arch, options, subset, cl)
            share = 5 * rec / (5 * rec + 4 * epoch)
            print(f"{arch:8} {'channels-last' if cl else 'plain':13} {rec:9.2f} {epoch:8.2f} {share:13.0%}  "
                  f"{last.test_loss:.7f}, {last.test_acc:.4f}", flush=True)


if __name__ == "__main__":
    main()
