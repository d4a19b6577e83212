"""The command line (src/oignons_mail/cli.py), through main([...]): exit statuses, output, files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from debian.changelog import Changelog

from oignons_mail.cli import main
from oignons_mail.errors import UserMessageError
from oignons_mail.writer import MANIFEST, TreeChanges, diff_tree, write_tree

REPO = Path(__file__).resolve().parents[2]
# The default site's golden fixture, never sites/nos-oignons.toml: an administrator edits that one.
SITE_FILE = REPO / "tests" / "golden" / "nos-oignons" / "in" / "site.toml"
SMARTHOST_FILES = {
    "smarthost/debconf.templates",
    "smarthost/main.cf",
    "smarthost/tables",
    "smarthost/tables.d/aliases",
}
LOGLEVEL_ERROR = (
    "tls.loglevel = 5: not a Postfix TLS log level (0 to 4)\n"
    "  hint: 1 logs a summary of each TLS handshake (postconf(5))"
)


def broken_site(tmp_path: Path) -> Path:
    """The real site with one broken value: tls.loglevel = 5."""
    text = SITE_FILE.read_text(encoding="utf-8")
    assert "\nloglevel = 1\n" in text
    path = tmp_path / "broken.toml"
    path.write_text(text.replace("\nloglevel = 1\n", "\nloglevel = 5\n"), encoding="utf-8")
    return path


def files_under(directory: Path) -> set[str]:
    return {str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file()}


def render_into(dest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--site", str(SITE_FILE), str(dest)]) == 0
    capsys.readouterr()


# -- validate -------------------------------------------------------------------


def test_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(SITE_FILE)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{SITE_FILE}: valid (7 relay destinations, 1 relay pin(s))\n"
    assert err == ""


def test_validate_default_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "nos-oignons.toml").write_bytes(SITE_FILE.read_bytes())
    monkeypatch.chdir(tmp_path)
    assert main(["validate"]) == 0
    assert capsys.readouterr().out == "sites/nos-oignons.toml: valid (7 relay destinations, 1 relay pin(s))\n"


def test_validate_broken_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = broken_site(tmp_path)
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"oignons-mail: error: {path}: {LOGLEVEL_ERROR}\n"


def test_validate_shows_the_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "site.toml"
    text = SITE_FILE.read_text(encoding="utf-8")
    path.write_text(text.replace('domain = "nos-oignons.net"', 'domain = "nos-oignons.net."'), encoding="utf-8")
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f'oignons-mail: error: {path}: site.domain = "nos-oignons.net.": not a domain name '
        "(lower-case labels of letters, digits and '-', at least two labels)\n"
        "  hint: write it like nos-oignons.net, without a trailing dot\n"
    )


def test_validate_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nowhere.toml"
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"oignons-mail: error: {path}: no such file\n  hint: copy sites/nos-oignons.toml and edit it\n"


# -- render ---------------------------------------------------------------------


def test_render_writes_the_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "rendered"
    assert main(["render", "--site", str(SITE_FILE), str(dest)]) == 0
    out, err = capsys.readouterr()
    written = files_under(dest) - {MANIFEST}
    assert written >= SMARTHOST_FILES | {"relay/main.cf"}
    assert out.splitlines() == [f"wrote {dest / relative}" for relative in sorted(written)]
    assert err == ""
    main_cf = (dest / "smarthost" / "main.cf").read_text(encoding="utf-8").splitlines()
    assert main_cf[0] == "# main.cf settings of oignons-mail-smarthost, generated from site.toml."
    assert "relayhost = bulbe.$mydomain" in main_cf
    assert "smtp_tls_fingerprint_cert_match = ac:ad:75:7f:58:c3:cf:53:ef:a0:d2:e3:0a:64:3d:e9:a2:c4:58:28" in main_cf
    assert oct((dest / "smarthost" / "main.cf").stat().st_mode & 0o777) == "0o644"


def test_render_again_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "rendered"
    render_into(dest, capsys)
    assert main(["render", "--site", str(SITE_FILE), str(dest)]) == 0
    assert capsys.readouterr().out == ""


def test_render_broken_site_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = broken_site(tmp_path)
    dest = tmp_path / "rendered"
    assert main(["render", "--site", str(path), str(dest)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"oignons-mail: error: {path}: {LOGLEVEL_ERROR}\n"
    assert not dest.exists()


def test_render_broken_site_leaves_an_existing_tree_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "rendered"
    render_into(dest, capsys)
    before = {relative: (dest / relative).read_text(encoding="utf-8") for relative in files_under(dest)}
    assert main(["render", "--site", str(broken_site(tmp_path)), str(dest)]) == 2
    assert {relative: (dest / relative).read_text(encoding="utf-8") for relative in files_under(dest)} == before


def test_render_diff_after_a_hand_edit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "rendered"
    render_into(dest, capsys)
    main_cf = dest / "smarthost" / "main.cf"
    edited = main_cf.read_text(encoding="utf-8").replace(
        "relayhost = bulbe.$mydomain\n", "relayhost = [bulbe.nos-oignons.net]\n"
    )
    main_cf.write_text(edited, encoding="utf-8")

    assert main(["render", "--diff", "--site", str(SITE_FILE), str(dest)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("--- a/smarthost/main.cf\n+++ b/smarthost/main.cf\n@@ ")
    assert "\n-relayhost = [bulbe.nos-oignons.net]\n+relayhost = bulbe.$mydomain\n" in out
    # Only that file differs, and --diff wrote nothing.
    assert [line for line in out.splitlines() if line.startswith(("--- ", "+++ "))] == [
        "--- a/smarthost/main.cf",
        "+++ b/smarthost/main.cf",
    ]
    assert main_cf.read_text(encoding="utf-8") == edited

    assert main(["render", "--diff", "--check", "--site", str(SITE_FILE), str(dest)]) == 1
    assert capsys.readouterr().out == out
    assert main_cf.read_text(encoding="utf-8") == edited


def test_render_diff_check_when_equal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "rendered"
    render_into(dest, capsys)
    assert main(["render", "--diff", "--check", "--site", str(SITE_FILE), str(dest)]) == 0
    assert capsys.readouterr() == ("", "")


def test_render_diff_into_a_missing_folder_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "rendered"
    assert main(["render", "--diff", "--check", "--site", str(SITE_FILE), str(dest)]) == 1
    out = capsys.readouterr().out
    assert "--- /dev/null\n+++ b/smarthost/main.cf\n" in out
    assert "\n+relayhost = bulbe.$mydomain\n" in out
    assert not dest.exists()


def test_render_refuses_a_folder_it_did_not_make(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `render .` in a checkout once removed all of it, .git included.
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    (checkout / ".git" / "HEAD").write_text("ref: refs/heads/main\n", encoding="utf-8")
    (checkout / "README.md").write_text("mine\n", encoding="utf-8")
    assert main(["render", "--site", str(SITE_FILE), str(checkout)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"oignons-mail: error: {checkout}: is not empty and was not made by oignons-mail render "
        f"(it has no {MANIFEST}); refusing to write there, since the folder must end up holding the rendering "
        "only: render into a new or empty folder\n"
    )
    assert files_under(checkout) == {".git/HEAD", "README.md"}


def test_render_into_an_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "empty"
    dest.mkdir()
    assert main(["render", "--site", str(SITE_FILE), str(dest)]) == 0
    assert capsys.readouterr().err == ""
    assert files_under(dest) >= SMARTHOST_FILES


def test_render_refuses_a_file_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "rendered"
    render_into(dest, capsys)
    added = dest / "smarthost" / "tables.d" / "old-table"
    added.write_text("old\n", encoding="utf-8")

    assert main(["render", "--diff", "--check", "--site", str(SITE_FILE), str(dest)]) == 1
    assert capsys.readouterr().out == "--- a/smarthost/tables.d/old-table\n+++ /dev/null\n@@ -1 +0,0 @@\n-old\n"

    assert main(["render", "--site", str(SITE_FILE), str(dest)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"oignons-mail: error: {dest}: holds files that oignons-mail render did not write "
        "(smarthost/tables.d/old-table); refusing to remove or keep them: move them away, "
        "or render into a new or empty folder\n"
    )
    assert added.read_text(encoding="utf-8") == "old\n"


@pytest.mark.parametrize("diff", [[], ["--diff"]], ids=["write", "diff"])
def test_render_to_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], diff: list[str]) -> None:
    dest = tmp_path / "notes.txt"
    dest.write_text("mine\n", encoding="utf-8")
    assert main(["render", *diff, "--site", str(SITE_FILE), str(dest)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    verb = "compare with" if diff else "render into"
    assert err == f"oignons-mail: error: {dest}: is a file, not a folder; give the folder to {verb}\n"
    assert dest.read_text(encoding="utf-8") == "mine\n"


def test_render_below_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine\n", encoding="utf-8")
    dest = tmp_path / "notes.txt" / "rendered"
    assert main(["render", "--site", str(SITE_FILE), str(dest)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"oignons-mail: error: {dest}: cannot write: [Errno 20] Not a directory: ")
    assert err.count("\n") == 1


def test_render_check_needs_diff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "rendered"
    assert main(["render", "--check", "--site", str(SITE_FILE), str(dest)]) == 2
    assert capsys.readouterr() == (
        "",
        "oignons-mail: error: render: --check compares, so it needs --diff (render --diff --check ...)\n",
    )
    assert not dest.exists()


def test_render_diff_into_a_closed_pipe(tmp_path: Path) -> None:
    # `oignons-mail render --diff ... | head -1`, with the reader gone before the first write.
    reader, writer = os.pipe()
    os.close(reader)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "oignons_mail", "render", "--diff", "--site", str(SITE_FILE), str(tmp_path / "x")],
            cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=str(REPO / "src")),
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(writer)
    assert result.returncode == 1
    assert result.stderr == "oignons-mail: error: standard output was closed before everything was written\n"


# -- write_tree / diff_tree directly -----------------------------------------------


def test_write_tree_removes_only_what_its_manifest_names(tmp_path: Path) -> None:
    assert write_tree({"a/one": "1\n", "two": "2\n"}, tmp_path) == TreeChanges(["a/one", "two"], [])
    assert (tmp_path / MANIFEST).read_text(encoding="utf-8").splitlines()[1:] == ["a/one", "two"]
    assert write_tree({"a/one": "1\n", "two": "2, changed\n", "three": "3\n"}, tmp_path) == TreeChanges(
        ["three", "two"], []
    )
    assert write_tree({"a/one": "1\n", "three": "3\n"}, tmp_path) == TreeChanges([], ["two"])
    assert files_under(tmp_path) == {"a/one", "three", MANIFEST}
    assert (tmp_path / MANIFEST).read_text(encoding="utf-8").splitlines()[1:] == ["a/one", "three"]
    assert write_tree({"a/one": "1\n", "three": "3\n"}, tmp_path) == TreeChanges()


def test_write_tree_refuses_a_manifest_naming_a_path_outside(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / MANIFEST).write_text("../victim\n", encoding="utf-8")
    (tmp_path / "victim").write_text("mine\n", encoding="utf-8")
    with pytest.raises(UserMessageError, match="refusing to write outside"):
        write_tree({"one": "1\n"}, tmp_path / "dest")
    assert (tmp_path / "victim").read_text(encoding="utf-8") == "mine\n"


def test_diff_tree(tmp_path: Path) -> None:
    write_tree({"kept": "same\n", "edited": "old\n", "gone": "bye\n"}, tmp_path)
    assert diff_tree({"kept": "same\n", "edited": "new\n", "added": "hi\n"}, tmp_path) == (
        "--- /dev/null\n+++ b/added\n@@ -0,0 +1 @@\n+hi\n"
        "--- a/edited\n+++ b/edited\n@@ -1 +1 @@\n-old\n+new\n"
        "--- a/gone\n+++ /dev/null\n@@ -1 +0,0 @@\n-bye\n"
    )
    assert diff_tree({"kept": "same\n", "edited": "old\n", "gone": "bye\n"}, tmp_path) == ""


@pytest.mark.parametrize("relative", ["../escape", "/etc/passwd", "a/../../escape"])
def test_write_tree_refuses_paths_outside_dest(tmp_path: Path, relative: str) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(UserMessageError, match="refusing to write outside"):
        write_tree({relative: "x\n"}, dest)
    assert files_under(tmp_path) == set()


# -- build ------------------------------------------------------------------------


def test_build_broken_site_stops_before_building(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = broken_site(tmp_path)
    work, dist = tmp_path / "work", tmp_path / "dist"
    status = main(["build", "--site", str(path), "--source", str(REPO), "--work", str(work), "--dist", str(dist)])
    assert status == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"oignons-mail: error: {path}: {LOGLEVEL_ERROR}\n"
    assert not work.exists()
    assert not dist.exists()


# -- usage ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ([], "usage: oignons-mail [-h] [--version] COMMAND ..."),
        (["validate"], "usage: oignons-mail validate [-h] [site]"),
        (["render"], "usage: oignons-mail render [-h] [--site SITE] [--diff] [--check] dest"),
        (["build"], "usage: oignons-mail build [-h] [--site SITE] [--source SOURCE] [--work WORK] [--dist DIST]"),
        (
            ["release"],
            "usage: oignons-mail release [-h] --message MESSAGE [--changelog CHANGELOG] [--site SITE] [--repo REPO] "
            "version",
        ),
    ],
)
def test_help(
    command: list[str], usage: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps usage lines to the terminal width
    with pytest.raises(SystemExit) as caught:
        main([*command, "--help"])
    assert caught.value.code == 0
    out, err = capsys.readouterr()
    assert out.startswith(usage + "\n")
    assert err == ""


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["render"], ["validate", "a.toml", "b.toml"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert capsys.readouterr().err.startswith("usage: oignons-mail")


def test_the_pin_command_of_the_hint_exists(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["pin", "--help"])
    assert caught.value.code == 0


def _module(*arguments: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "oignons_mail", *arguments],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_python_m_oignons_mail_help() -> None:
    result = _module("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: oignons-mail [-h] [--version] COMMAND ...\n")
    for command in ("validate", "render", "build"):
        assert f"\n    {command} " in result.stdout
    assert result.stderr == ""


def test_python_m_oignons_mail_exit_status_of_a_broken_site(tmp_path: Path) -> None:
    path = broken_site(tmp_path)
    result = _module("validate", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"oignons-mail: error: {path}: {LOGLEVEL_ERROR}\n"


# -- release ----------------------------------------------------------------------

CHANGELOG = """oignons-mail (0.1.0) unstable; urgency=medium

  * First release.

 -- Nos oignons <contact@nos-oignons.net>  Wed, 25 Nov 2026 12:00:00 +0000
"""


@pytest.fixture
def changelog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DEBFULLNAME", raising=False)
    monkeypatch.delenv("DEBEMAIL", raising=False)
    path = tmp_path / "changelog"
    path.write_text(CHANGELOG, encoding="utf-8")
    return path


def release_main(changelog: Path, *arguments: str) -> int:
    return main(["release", *arguments, "--changelog", str(changelog), "--site", str(SITE_FILE)])


def test_release_adds_an_entry(changelog: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = "Relay pin added for bulbe's next key; the yahoo transport dropped. " * 2
    assert release_main(changelog, "0.2.0", "--message", message) == 0
    assert capsys.readouterr() == ("oignons-mail (0.2.0) unstable; urgency=medium\n", "")
    text = changelog.read_text(encoding="utf-8")
    assert text.endswith("\n\n" + CHANGELOG)
    with changelog.open(encoding="utf-8") as handle:
        parsed = Changelog(handle, strict=True)
    assert [str(version) for version in parsed.versions] == ["0.2.0", "0.1.0"]
    assert parsed.author == "Nos oignons <contact@nos-oignons.net>"
    assert parsed[0].changes() == [
        "",
        "  * Relay pin added for bulbe's next key; the yahoo transport dropped. Relay pin",
        "    added for bulbe's next key; the yahoo transport dropped.",
        "",
    ]
    assert max(len(line) for line in text.splitlines()) <= 80


def test_release_author_from_debfullname_and_debemail(
    changelog: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEBFULLNAME", "Alice Admin")
    monkeypatch.setenv("DEBEMAIL", "alice@nos-oignons.net")
    assert release_main(changelog, "0.1.1", "--message", "A pin changed.") == 0
    with changelog.open(encoding="utf-8") as handle:
        assert Changelog(handle).author == "Alice Admin <alice@nos-oignons.net>"


@pytest.mark.parametrize("version", ["0.1.0", "0.0.9", "0.1.0~rc1"])
def test_release_refuses_a_version_not_greater(
    changelog: Path, capsys: pytest.CaptureFixture[str], version: str
) -> None:
    assert release_main(changelog, version, "--message", "x") == 2
    assert capsys.readouterr() == (
        "",
        f"oignons-mail: error: {version}: not greater than the last version in {changelog}, 0.1.0; "
        "apt upgrades only to a greater version (dpkg --compare-versions)\n",
    )
    assert changelog.read_text(encoding="utf-8") == CHANGELOG


@pytest.mark.parametrize(
    ("version", "message", "error"),
    [
        ("0.2 beta", "x", "0.2 beta: not a Debian version (e.g. 0.2.0)"),
        ("0.2.0", " \n ", "--message: must say what changed (it becomes the changelog entry)"),
    ],
)
def test_release_refuses_a_broken_version_or_message(
    changelog: Path, capsys: pytest.CaptureFixture[str], version: str, message: str, error: str
) -> None:
    assert release_main(changelog, version, "--message", message) == 2
    assert capsys.readouterr() == ("", f"oignons-mail: error: {error}\n")
    assert changelog.read_text(encoding="utf-8") == CHANGELOG


def test_release_without_a_changelog(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "changelog"
    assert release_main(missing, "0.2.0", "--message", "x") == 2
    assert capsys.readouterr().err.startswith(f"oignons-mail: error: {missing}: cannot be read: ")


# -- running from a checkout ---------------------------------------------------------


@pytest.mark.parametrize("cwd", ["checkout", "elsewhere"])
def test_the_checkouts_wrapper(tmp_path: Path, cwd: str) -> None:
    # bin/oignons-mail: Debian's python3 with -P, whatever python3 PATH finds first.
    result = subprocess.run(
        [str(REPO / "bin" / "oignons-mail"), "validate", str(SITE_FILE)],
        cwd=REPO if cwd == "checkout" else tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{SITE_FILE}: valid (7 relay destinations, 1 relay pin(s))\n"


def _python_without_site_packages(*argv: str) -> subprocess.CompletedProcess[str]:
    # -S: no site-packages, as in a python3 that is not Debian's, or a node with
    # python3 alone; the checkout's debian/ folder (cwd is on sys.path with -m)
    # must not make it cryptic.
    return subprocess.run(
        [sys.executable, "-S", "-m", "oignons_mail", *argv],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO / "src")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_python3_alone_runs_help_validate_and_dns() -> None:
    assert _python_without_site_packages("--help").returncode == 0
    result = _python_without_site_packages("validate", str(SITE_FILE))
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    result = _python_without_site_packages("dns", "--site", str(SITE_FILE), "--dkim-dir", "/nonexistent")
    assert "nos-oignons.net. 3600 IN MX 10 bulbe.nos-oignons.net." in result.stdout, result.stderr


@pytest.mark.parametrize(
    ("argv", "package", "module"),
    [
        (["render", "--site", str(SITE_FILE), "/nonexistent/out"], "python3-jinja2", "jinja2"),
        (["release", "0.9", "--message", "x", "--changelog", "/nonexistent/c"], "python3-debian", "debian.changelog"),
    ],
)
def test_a_command_without_its_module_says_which_package_to_install(argv: list[str], package: str, module: str) -> None:
    result = _python_without_site_packages(*argv)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"oignons-mail: error: {argv[0]} needs {package} (cannot import {module} with {sys.executable})\n"
        f"  hint: apt install {package} (on a build machine: make build-deps)\n"
    )


# -- the default site: the installed relay's, else the checkout's ----------------------


def test_the_installed_relays_site_comes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    installed = tmp_path / "usr-share" / "site.toml"
    installed.parent.mkdir()
    installed.write_bytes(SITE_FILE.read_bytes())
    monkeypatch.setattr("oignons_mail.cli.INSTALLED_SITE", installed)
    monkeypatch.chdir(REPO)  # a checkout, whose sites/nos-oignons.toml comes second
    assert main(["validate"]) == 0
    assert capsys.readouterr().out == f"{installed}: valid (7 relay destinations, 1 relay pin(s))\n"


def test_no_site_anywhere_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("oignons_mail.cli.INSTALLED_SITE", tmp_path / "absent.toml")
    monkeypatch.chdir(tmp_path)
    assert main(["dns"]) == 2
    assert capsys.readouterr().err == (
        f"oignons-mail: error: no site file given, and neither {tmp_path}/absent.toml (installed by "
        "oignons-mail-relay) nor sites/nos-oignons.toml (in a checkout, from its top directory) exists\n"
        "  hint: name the site file: --site path/to/site.toml (validate: its argument)\n"
    )
