"""The quick start's claim (notebook ``00_quickstart``).

Evidence: ``report`` and ``run`` (the binary-feedback rule's protocol report and run), ``dfa_report``
and ``dfa`` (plain DFA's, at the same profile).
"""
from __future__ import annotations

from ..claims import Chapter, Check

CLAIMS = Chapter("quickstart")


@CLAIMS.claim("quickstart.sign_dfa_fails",
              "Binary feedback does not rescue DFA: sign_dfa fails on a diagnostic that also fails plain DFA")
def _(ev):
    return Check(bool(set(ev.report.fired) & set(ev.dfa_report.fired)),
                 f"sign_dfa {ev.report.verdict} (acc {ev.run.test_acc:.4f}); "
                 f"dfa {ev.dfa_report.verdict} (acc {ev.dfa.test_acc:.4f})")


def at_init(P, data, rules, x, y):
    """Each rule of ``rules`` built on one freshly initialised model of the profile (first seed), untrained: its
    per-layer Gamma against the BP gradient on ``(x, y)`` and the mean angle between its layers' B and W (NaN for
    a rule without per-layer feedback). One row per rule."""
    import math

    import pandas as pd

    from ...diagnostics import bp_grads, gamma_per_layer
    from ...methods import build_method
    from ...models import build_model

    opts = {k: P.base[k] for k in ("width", "depth") if k in P.base}
    model = build_model(P.base["arch"], data.input_shape, data.num_classes, seed=P.seeds[0], **opts).to(x.device)
    _, bp, _ = bp_grads(model, x, y)
    rows = []
    for name in rules:
        rule = build_method(name, model, seed=P.seeds[0])
        angles = rule.epoch_stats()
        gamma = gamma_per_layer(rule.credit(x, y), bp).mean
        rows.append({"rule": name, **{f"Gamma h{l}": g for l, g in enumerate(gamma)},
                     "mean B-W angle": sum(angles.values()) / len(angles) if angles else math.nan})
    return pd.DataFrame(rows).set_index("rule")
