"""scripts/ensure_data.sh (run by `make book` / `make test`): find, install, or say what to do.

Each test runs a copy of the script whose system folder points into tmp_path, with a PATH that
holds only the tools the test provides, so the apt-get and sudo branches are exercised with
fakes and nothing on the machine is touched.
"""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "ensure_data.sh"
SYSTEM_LINE = "SYSTEM_DIR=/usr/share/datasets/fashion-mnist"
FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _write_idx_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        with gzip.open(folder / f"{name}.gz", "wb") as f:
            f.write(b"\x00")


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(0o755)


@pytest.fixture
def sandbox(tmp_path):
    """A copy of the script with its system folder in tmp_path, and a bin folder for PATH."""
    text = SCRIPT.read_text()
    assert SYSTEM_LINE in text, "ensure_data.sh no longer sets SYSTEM_DIR as this test expects"
    system = tmp_path / "system" / "fashion-mnist"
    script = tmp_path / "ensure_data.sh"
    script.write_text(text.replace(SYSTEM_LINE, f"SYSTEM_DIR={system}"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("id", "cat"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    # sudo that needs no password: the script's non-root branch, taken when tests run as a user
    _fake(bin_dir, "sudo", '[ "$1" = -n ] && shift; exec "$@"')
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": str(bin_dir), "HOME": str(home)}

    def run(**extra):
        proc = subprocess.run([shutil.which("bash"), str(script)], env={**env, **extra},
                              capture_output=True, text=True, timeout=60, check=False)
        return proc.returncode, proc.stdout + proc.stderr

    return run, system, bin_dir, tmp_path


def test_finds_files_under_faeval_data(sandbox):
    run, _system, _bin, tmp = sandbox
    _write_idx_files(tmp / "mine" / "fashion-mnist")
    rc, out = run(FAEVAL_DATA=str(tmp / "mine"))
    assert rc == 0, out
    assert f"found in {tmp / 'mine' / 'fashion-mnist'}" in out


def test_without_apt_it_fails_and_says_what_to_do(sandbox):
    run, system, _bin, _tmp = sandbox
    rc, out = run()
    assert rc == 1
    assert "apt-get is not available" in out
    assert "apt-get install -y dataset-fashion-mnist" in out and "FAEVAL_DATA" in out
    assert str(system) in out  # the folders it searched


def test_installs_through_apt_and_checks_the_result(sandbox):
    run, system, bin_dir, tmp = sandbox
    log = tmp / "apt.log"
    # First install fails (stale package lists), update succeeds, second install provides the files.
    _fake(bin_dir, "apt-get", f"""echo "$*" >> {log}
if [ "$1" = install ] && [ ! -f {tmp}/updated ]; then exit 100; fi
if [ "$1" = update ]; then : > {tmp}/updated; exit 0; fi
/bin/mkdir -p {system}
for f in {' '.join(FILES)}; do printf x | /bin/gzip > {system}/$f.gz; done""")
    rc, out = run()
    assert rc == 0, out
    assert "refreshing the package lists" in out and f"installed in {system}" in out
    calls = log.read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["install", "update", "install"]
    assert all("dataset-fashion-mnist" in c for c in calls if c.startswith("install"))


def test_an_install_that_leaves_no_files_is_an_error(sandbox):
    run, system, bin_dir, _tmp = sandbox
    _fake(bin_dir, "apt-get", "exit 0")
    rc, out = run()
    assert rc == 1
    assert f"{system} lacks the IDX files" in out
