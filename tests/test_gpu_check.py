"""The GPU check's dry run: scripts/gpu_check.py on the CPU at the smoke profile's sizes, every section, so the
script cannot rot while no GPU is at hand; and what it does when its budget runs out."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
SECTIONS = ["steps", "group", "paper_cost", "audit", "bfloat16"]


def _check(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}           # as on the GPU machine: faeval is not installed there
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_dry_run_passes_every_section_and_writes_its_report(tmp_path):
    start = time.perf_counter()
    proc = _check("--device", "cpu", "--smoke", "--out", str(tmp_path))
    seconds = time.perf_counter() - start
    print(f"dry run: {seconds:.0f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["sections"]) == SECTIONS
    assert {name: s["status"] for name, s in report["sections"].items()} == dict.fromkeys(SECTIONS, "passed")
    steps = report["sections"]["steps"]
    # every rule on every architecture: 8 rules x 5 architectures, less the pairs a rule is not defined on
    assert len(steps["checks"]) >= 30 and all(c["ok"] for c in steps["checks"])
    assert "fa: not defined" in steps["measures"]["rules_per_arch"]["cnn"]
    group = report["sections"]["group"]["measures"]
    assert group["one_by_one_s"] > 0 and group["group_s"] > 0
    cost = report["sections"]["paper_cost"]["measures"]
    assert set(cost["one_run_steps_per_s"]) == {"bp", "fa", "ep", "dfa", "state_bridge", "credit_bridge"}
    assert cost["projected_hours_grouped"] > 0 and "125 training runs" in cost["paper"]
    audit = report["sections"]["audit"]["measures"]
    assert audit["runs"] >= 13 and 0 < audit["claims_held"] <= audit["claims"]
    assert "bp" in " ".join(report["sections"]["bfloat16"]["measures"]["step_speedup"])
    summary = (tmp_path / "summary.md").read_text()
    assert all(f"| {name} | passed |" in summary for name in SECTIONS)
    assert seconds < 300, f"the dry run took {seconds:.0f} s"


def test_a_run_cut_off_by_its_budget_keeps_what_it_measured(script, tmp_path, monkeypatch):
    """In this process, so that the budget can be shorter than the first section: it stops where it is."""
    # the script sets these where they are unset: set here, they are restored after the test
    env = {"MPLBACKEND": "Agg", "FAEVAL_PROGRESS": "0", "FAEVAL_DATA": os.environ.get("FAEVAL_DATA", "")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setitem(script.SECTIONS, "steps", 0.1)
    rc = script.main(["--device", "cpu", "--smoke", "--out", str(tmp_path), "--budget", "1.5", "--only", "steps",
                      "audit"])
    assert rc == 3
    report = json.loads((tmp_path / "report.json").read_text())
    steps = report["sections"]["steps"]
    assert steps["status"] == "cut off" and steps["checks"], "the steps measured before the cut are kept"
    assert report["sections"]["audit"]["status"] == "skipped"
    assert "| steps | cut off |" in (tmp_path / "summary.md").read_text()


def test_asking_for_cuda_without_it_says_so():
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = _check("--out", "/tmp/unused", timeout=120)
    assert proc.returncode == 2 and "sees no CUDA device" in proc.stderr and "--device cpu --smoke" in proc.stderr


def test_claims_are_compared_status_by_status(script, tmp_path):
    rows = [{"id": "audit.dfa_d1", "regime": "head fixed", "status": "held", "ours": "3/3"},
            {"id": "audit.bp_passes", "regime": "head fixed", "status": "held", "ours": "3/3"}]
    cpu = tmp_path / "01_audit.json"
    quick = {"profile": "quick", "overrides": {}, "cache_version": 3}
    cpu.write_text(json.dumps({"parameters": quick, "claims": [rows[0], {**rows[1], "status": "not held",
                                                                         "ours": "2/3"}]}))
    report = script.Report(tmp_path / "out", {"date": "", "device": "cpu", "device_name": "", "torch": "",
                                               "python": "", "profile": "quick", "budget_s": 1})
    script.compare_claims(report, cpu, rows, quick)
    checks = {c["name"]: c["ok"] for c in report.data["sections"]["audit"]["checks"]}
    assert checks == {"the CPU file measured the same profile": True, "the same claims as the CPU file": True,
                      "audit.dfa_d1 (head fixed): same status": True,
                      "audit.bp_passes (head fixed): same status": False}
    assert "FAILED audit.bp_passes (head fixed): same status: CPU not held (2/3), here held (3/3)" in \
        (tmp_path / "out" / "summary.md").read_text()
    # a file of another profile is named as such (a smoke run against a quick build's claims)
    script.compare_claims(report, cpu, rows, {"profile": "smoke", "overrides": {"seeds": [42]}})
    last = [c for c in report.data["sections"]["audit"]["checks"] if c["name"].startswith("the CPU file")][-1]
    assert not last["ok"] and last["detail"] == "CPU: quick {}; here: smoke {'seeds': [42]}"


def test_the_gpu_chapter_shows_the_last_report_or_says_there_is_none():
    folder = ROOT / "benchmarks" / "gpu"
    reports = sorted(folder.glob("20*.md"))            # <date>-<device>.md, one per committed GPU run
    latest = (folder / "latest.md").read_text()
    if reports:
        assert latest == reports[-1].read_text(), "latest.md is a copy of the newest dated report"
    else:
        assert latest.startswith("**No GPU run of the check has been made yet.**")
    chapter = (ROOT / "book" / "gpu.md").read_text()
    assert "```{include} ../benchmarks/gpu/latest.md" in chapter
    assert "PYTHONPATH=. python3 scripts/gpu_check.py --out" in chapter and "make gpu-check-prepare" in chapter
