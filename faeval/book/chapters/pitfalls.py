"""The pitfalls chapter's claims (notebook ``06_pitfalls``).

Evidence: ``results``, the reproducers' results (:func:`faeval.book.pitfalls.run_all`), each with its number,
the wrong and the right value and the details it recorded.
"""
from __future__ import annotations

import math

from ..claims import Chapter, Check

CLAIMS = Chapter("pitfalls")


def by(ev, number: str):
    """The result of pitfall ``number`` (``"1"`` ... ``"6.5"``)."""
    return {r.number: r for r in ev.results}[number]


@CLAIMS.claim("pitfalls.norm_axis", "t.norm(-1) is not the per-row norm", paper=True)
def _(ev):
    one = by(ev, "1")
    return Check(abs(one.wrong - 1 / (1 / 3 + 1 / 4 + 1 / 6 + 1 / 8)) < 1e-6 and list(one.right) == [5.0, 10.0],
                 f"{one.wrong:.6f} vs {one.right}")


@CLAIMS.claim("pitfalls.eps_clamp", "The eps-clamped cosine understates Gamma by 10x or more at ||g|| ~ 1e-10",
              paper=True)
def _(ev):
    two = by(ev, "2")
    ratio = two.details["ratio_right_over_wrong"]
    return Check(ratio >= 10, f"{two.wrong:.4f} vs {two.right:.4f} ({ratio:.0f}x)")


@CLAIMS.claim("pitfalls.half_precision", "float16 references give Gamma = nan; bfloat16 does not", paper=True)
def _(ev):
    three = by(ev, "3")
    return Check(math.isnan(three.wrong) and not math.isnan(three.right["bfloat16"]),
                 f"fp16 {three.wrong}, bf16 {three.right['bfloat16']:.4f}")


@CLAIMS.claim("pitfalls.fresh_feedback",
              "Fresh feedback reads near zero where the training-time feedback reads clearly positive", paper=True)
def _(ev):
    four = by(ev, "4")
    std = four.details["fresh_std"]
    return Check(abs(four.wrong) < 3 * std + 0.01 and four.right > 0.05,
                 f"trained {four.right:+.3f}, fresh {four.wrong:+.4f} +/- {std:.4f}")


@CLAIMS.claim("pitfalls.aggregations", "Four valid aggregations disagree in sign", paper=True)
def _(ev):
    five = by(ev, "5")
    return Check(bool(five.details["sign_flip"]), ", ".join(f"{k} {v:+.3f}" for k, v in five.wrong.items()))


@CLAIMS.claim("pitfalls.layer0",
              "Layer 0 decides the sign of the all-layer mean (the hidden-only mean has the other sign)", paper=True)
def _(ev):
    six = by(ev, "6")
    hidden = six.details["hidden_only_mean"]
    return Check((six.wrong > 0) != (hidden > 0),
                 f"all-layer mean {six.wrong:+.3f}, l0 {six.details['layer0']:+.3f}, hidden mean {hidden:+.3f}")


@CLAIMS.claim("pitfalls.missing_aux", "A missing auxiliary state reads as a perfect cosine under the naive fallback",
              paper=True)
def _(ev):
    naive = by(ev, "6.5")
    return Check(naive.wrong == 1.0, f"naive {naive.wrong}, faeval: {naive.right}")


@CLAIMS.claim("pitfalls.ep_precision",
              "At the paper's state scale, float32 keeps less than half of EP's credit alignment (Gamma) at "
              "initialisation; float64 phases keep all of it")
def _(ev):
    seven = by(ev, "7")
    return Check(seven.right > 0.99 and seven.wrong < 0.5 * seven.right,
                 f"float32 {seven.wrong:+.3f}, float64 {seven.right:+.3f} at ||h_L|| "
                 f"{seven.details['median_h_L_norm']:.2g}")


# ---------------------------------------------------------------------------------------------
# the chapter's reading of its figure (glued under it; see faeval.book.prose)
# ---------------------------------------------------------------------------------------------
def read_sweep(sweep) -> str:
    """Down to which reference norm the clamped cosine agrees with the unclamped one (within 0.01), and how far
    it falls at the smallest norm of the sweep."""
    s = sweep.sort_values("grad_norm", ascending=False)
    agree = s[(s.clamped - s.unclamped).abs() < 0.01]
    low = s.iloc[-1]
    first = (f"The two cosines agree to 0.01 down to a reference norm of {agree.grad_norm.min():.0e}"
             if len(agree) else "The two cosines disagree at every norm of the sweep")
    return (f"{first}. At {low.grad_norm:.0e}, F.cosine_similarity reports {low.clamped:.4f} where the unclamped "
            f"cosine is {low.unclamped:.3f}: {low.unclamped / low.clamped:,.0f} times too small.")
