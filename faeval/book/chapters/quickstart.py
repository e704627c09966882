"""The quick start's claim (notebook ``00_quickstart``).

Evidence: ``report`` and ``run`` (the binary-feedback rule's protocol report and run), ``dfa_report``
and ``dfa`` (plain DFA's, at the same profile).
"""
from __future__ import annotations

from .. import prose
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


# ---------------------------------------------------------------------------------------------
# the chapter's readings of its report and credit measurement (glued under each; see faeval.book.prose)
# ---------------------------------------------------------------------------------------------
def read_report(report, who: str) -> str:
    """A protocol report in one sentence: the verdict, what fired with its value and threshold, what stayed
    quiet."""
    fired, quiet = [], []
    for name, r in report.results.items():
        if r is None or r.fired is None:
            continue
        if name == "D3":
            text = (f"D3 (accuracy {r.value:.3f} against the frozen baseline's {r.baseline:.3f}, "
                    f"{prose.vs_frozen(100 * (r.value - r.baseline))})")
        else:
            text = f"{name} ({r.value:.3g} against {r.threshold:.3g})"
        (fired if r.fired else quiet).append(text)
    return (f"{who}'s verdict is **{report.verdict}**. Fired: {prose.names(fired)}. Quiet: {prose.names(quiet)}.")


def read_gamma(q) -> str:
    """Deep Gamma against its fresh-feedback null, in null standard deviations."""
    z = (q["deep_gamma"] - q["null_deep"]) / q["null_deep_std"] if q["null_deep_std"] else float("inf")
    where = ("inside the null's spread: below the first layer the credit is aligned no better than chance"
             if abs(z) < 3 else "well above the null: the rule's credit carries information about the gradient"
             if z > 0 else "well below the null: the credit points against the gradient")
    return (f"Deep Gamma {q['deep_gamma']:+.3f} is {z:.1f} null standard deviations from the fresh-feedback null "
            f"({q['null_deep']:+.4f} ± {q['null_deep_std']:.4f}), {where}.")


def read_at_init(table) -> str:
    """Each rule's mean B-W angle and its Gamma at the last hidden state, at initialisation."""
    last = [c for c in table.columns if c.startswith("Gamma h")][-1]
    parts = [f"{rule}: {r['mean B-W angle']:.0f} degrees, {last} {r[last]:+.3f}" for rule, r in table.iterrows()]
    return ("At initialisation, " + "; ".join(parts) + ". The closer B starts to W, the higher its first "
            "Gamma; a rule that starts near 90 degrees has to earn its alignment in training.")
