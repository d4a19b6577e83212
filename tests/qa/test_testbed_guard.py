"""tests/qa/debian-qa refuses autopkgtest results that were not made in an unshare testbed.

autopkgtest falls back to the null virtualisation server (the tests run on
this host) when it is given one it does not know; `debian-qa check-testbed`
is the guard `make sbuild` runs after each autopkgtest.  Fast, no root: the
output directories are made here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
DEBIAN_QA = TOP / "tests" / "qa" / "debian-qa"
TARBALL = "/home/oignons-qa/.cache/sbuild/bookworm-amd64.tar"
UNSHARE = f"unshare --release bookworm --tarball {TARBALL}"

pytestmark = pytest.mark.skipif(shutil.which("dpkg-parsechangelog") is None, reason="needs dpkg-dev")


def output_dir(
    path: Path,
    virt_args: str = UNSHARE,
    virt_server: str = f"autopkgtest-virt-{UNSHARE}",
    packages: str = "adduser\t3.134\napt\t2.6.1\n",
) -> Path:
    """An autopkgtest --output-dir as autopkgtest 5.28 writes it (the files the guard reads)."""
    path.mkdir()
    (path / "log").write_text(
        "autopkgtest [02:43:27]: version 5.28\n"
        "autopkgtest [02:43:27]: host vm; command line: /usr/bin/autopkgtest --output-dir out -U"
        f" oignons-mail-relay_0.1.0_all.deb oignons-mail_0.1.0.dsc -- {virt_args}\n",
        encoding="utf-8",
    )
    (path / "testinfo.json").write_text(json.dumps({"virt_server": virt_server, "nproc": "2"}), encoding="utf-8")
    (path / "testbed-packages").write_text(packages, encoding="utf-8")
    return path


def guard(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DEBIAN_QA), "check-testbed", "bookworm", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_unshare_testbed_passes(tmp_path: Path) -> None:
    result = guard(output_dir(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "testbed checked: unshare virtualisation server" in result.stdout


def test_the_null_server_fails(tmp_path: Path) -> None:
    result = guard(output_dir(tmp_path / "out", virt_args="null", virt_server="autopkgtest-virt-null"))
    assert result.returncode != 0
    assert "unshare virtualisation server" in result.stderr


def test_a_null_server_named_after_unshare_arguments_fails(tmp_path: Path) -> None:
    # The command line names unshare, but the server that ran was null.
    result = guard(output_dir(tmp_path / "out", virt_server="autopkgtest-virt-null"))
    assert result.returncode != 0
    assert "autopkgtest-virt-null" in result.stderr


def test_another_release_fails(tmp_path: Path) -> None:
    out = output_dir(tmp_path / "out", virt_args=UNSHARE.replace("bookworm", "trixie"))
    assert guard(out).returncode != 0


def test_a_testbed_with_the_hosts_qa_tools_fails(tmp_path: Path) -> None:
    out = output_dir(tmp_path / "out", packages="adduser\t3.134\nautopkgtest\t5.28\nsbuild\t0.85.0\n")
    result = guard(out)
    assert result.returncode != 0
    assert "the testbed has this host's packages" in result.stderr


def test_missing_results_fail(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    result = guard(tmp_path / "out")
    assert result.returncode != 0
    assert "wrote no log" in result.stderr
