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
