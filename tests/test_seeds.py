"""Every random draw has a stream of its own: no auxiliary tensor of a rule correlates with the model.

The bug this guards against: the feedback matrices were drawn from
``torch.Generator().manual_seed(seed)``, the same seed the model's initialisation
used, and B_0 correlated -0.35 entry by entry with ``embed.weight`` (seed 42).
"""
import itertools

import pytest
import torch

import faeval.book.probe_rules  # noqa: F401  (the book's probe rules too: every registered rule is checked)
from faeval.data import Dataset
from faeval.methods import METHODS, UnsupportedArchError, build_method
from faeval.methods.kp import KolenPollack
from faeval.models import ARCHS, build_model
from faeval.seeds import generator, seeded, stream_seed

N = 16384          # entries compared per pair: chance |r| has std 1/sqrt(N) = 0.008, so 0.05 is 6 sigma
LIMIT = 0.05
SEEDS = (0, 42, 123, 456)
# 100 classes and wide layers, so that DFA's (classes x width) feedback matrices hold >= N entries
SHAPES = {"resmlp": ((784,), dict(width=256)), "studentnet": ((784,), dict(width=256)),
          "vit": ((1, 28, 28), dict(width=192)), "cnn": ((1, 28, 28), dict(channels=(32, 64, 192))),
          "resnet": ((1, 28, 28), dict(channels=48))}   # conv weights of 48 x 48 x 9 >= N


def _tensors(obj, prefix=""):
    """Every floating tensor in a nested aux_state() dict / list."""
    if torch.is_tensor(obj):
        # constants are not draws (uSF's stored scale)
        if obj.is_floating_point() and obj.numel() > 1 and bool((obj != obj.flatten()[0]).any()):
            yield prefix, obj.detach().flatten()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def _aux_tensors(rule):
    if isinstance(rule, KolenPollack):     # it stores W - B, which holds W by construction: its draw is B
        out = {f"B[{i}]": B.flatten() for i, B in enumerate(rule.backward_matrices())}
    else:
        out = dict(_tensors(rule.aux_state()))
    for name, g in vars(rule).items():     # a rule's own noise streams (Credit Bridge, brSF, weight mirroring)
        if isinstance(g, torch.Generator):
            clone = torch.Generator(device=g.device)
            clone.set_state(g.get_state())
            out[f"{name} draws"] = torch.randn(N, generator=clone, device=g.device)
    return out


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    n = min(len(a), len(b), N)
    a, b = a[:n].double(), b[:n].double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_the_old_seeding_is_what_this_test_catches():
    """Drawing the feedback from manual_seed(seed), as the old code did, correlates beyond the limit."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(42)
        model = build_model("resmlp", (784,), 100, width=256)
    old_b0 = torch.randn((100, 784), generator=torch.Generator().manual_seed(42)).flatten()
    assert abs(_corr(old_b0, model.embed.weight.detach().flatten())) > 0.2


@pytest.mark.parametrize("arch", list(ARCHS))
def test_no_auxiliary_tensor_correlates_with_a_model_parameter(arch):
    shape, opts = SHAPES[arch]
    checked = {}
    for seed, method in itertools.product(SEEDS, METHODS):
        model = build_model(arch, shape, 100, seed=seed, **opts)
        try:
            rule = build_method(method, model, seed=seed)
        except UnsupportedArchError:
            continue
        params = {n: p for n, p in _tensors(dict(model.named_parameters())) if p.numel() >= N}
        for (an, a), (pn, p) in itertools.product(_aux_tensors(rule).items(), params.items()):
            if a.numel() < N:
                continue
            r = _corr(a, p)
            assert abs(r) < LIMIT, f"{arch}/{method} seed {seed}: {an} correlates {r:+.3f} with {pn}"
            checked[method] = checked.get(method, 0) + 1
    # the rules with random auxiliary state were all measured on this arch (the test cannot pass empty)
    expected = ({"dfa", "drtp", "credit_bridge", "state_bridge", "fa_layer", "frsf", "brsf", "kp", "wm"}
                | ({"fa"} if arch not in ("cnn", "resnet") else set()))
    assert expected <= set(checked), f"{arch}: pairs checked per rule {checked}"


def test_named_streams_are_independent_of_each_other_and_of_the_model_init():
    purposes = ["model-init", "feedback", "bridge-net", "bridge-noise", "feedback-redraw", "mirror-noise",
                "null-feedback", "data-order/0",
                "data-order/1", "augment/0", "random-targets/0", "subset", "label-noise", "eval-subset"]
    for seed in SEEDS:
        draws = {p: torch.randn(N, generator=generator(seed, p)) for p in purposes}
        with seeded(seed, "model-init"):
            draws["global RNG under seeded(model-init)"] = torch.randn(N)
        for (pa, a), (pb, b) in itertools.combinations(draws.items(), 2):
            if {pa, pb} == {"model-init", "global RNG under seeded(model-init)"}:
                assert torch.equal(a, b)          # the same stream, by either route
                continue
            assert abs(_corr(a, b)) < LIMIT, (seed, pa, pb)
    assert len({stream_seed(s, p) for s in SEEDS for p in purposes}) == len(SEEDS) * len(purposes)


def test_data_streams_do_not_share_draws():
    """Data order, augmentation and random targets of one epoch come from three streams."""
    x = torch.randn(512, 1, 8, 8)
    ds = Dataset(x, torch.zeros(512, dtype=torch.long), x[:8], torch.zeros(8, dtype=torch.long), 10, (1, 8, 8),
                 "tiny", augment=True, random_targets=True)
    a = torch.cat([y for _, y in ds.batches(64, seed=3, epoch=0)])
    b = torch.cat([y for _, y in ds.batches(64, seed=3, epoch=1)])
    order = torch.randperm(512, generator=generator(3, "data-order/0"))
    assert not torch.equal(a, b)
    # the targets are the random-targets stream's draws, not anything the order's generator made
    assert torch.equal(a, torch.randint(ds.num_classes, (512,), generator=generator(3, "random-targets/0")))
    assert not torch.equal(order[:16] % ds.num_classes, a[:16])
