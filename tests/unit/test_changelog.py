"""Each site's own release history (src/oignons_mail/changelog.py, `oignons-mail release --site`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from oignons_mail import changelog
from oignons_mail.cli import main
from oignons_mail.errors import BuildError

REPO = Path(__file__).resolve().parents[2]
OTHER_SITE = REPO / "tests" / "golden" / "other-site" / "in" / "site.toml"
DEFAULT_SITE = REPO / "tests" / "golden" / "nos-oignons" / "in" / "site.toml"
NOS_OIGNONS = "Nos oignons <contact@nos-oignons.net>"
POTAGER = "Le Potager <admins@potager.example.org>"


def entry(version: str, author: str) -> str:
    date = "Wed, 25 Nov 2026 12:00:00 +0000"
    return f"oignons-mail ({version}) unstable; urgency=medium\n\n  * x\n\n -- {author}  {date}\n"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A source tree whose debian/changelog Nos oignons started (a later entry signed by someone else)."""
    (tmp_path / "src" / "debian").mkdir(parents=True)
    text = entry("0.2.0", "Alice Admin <alice@nos-oignons.net>") + "\n" + entry("0.1.0", NOS_OIGNONS)
    (tmp_path / "src" / "debian" / "changelog").write_text(text, encoding="utf-8")
    return tmp_path / "src"


def test_the_default_site_uses_the_changelog_its_maintainer_started(source: Path, tmp_path: Path) -> None:
    found = changelog.site_changelog(tmp_path / "nos.toml", NOS_OIGNONS, source)
    assert found == changelog.SiteChangelog(source / "debian" / "changelog", exists=True, shared=True)


def test_another_site_never_gets_the_default_sites_history(source: Path, tmp_path: Path) -> None:
    site_file = tmp_path / "potager.toml"
    assert changelog.site_changelog(site_file, POTAGER, source) == changelog.SiteChangelog(
        tmp_path / "potager.changelog", exists=False, shared=False
    )
    with pytest.raises(BuildError) as refused:
        changelog.require(site_file, POTAGER, source)
    assert str(refused.value) == (
        f"{site_file}: this site has no changelog yet ({tmp_path}/potager.changelog is missing), and "
        f"{source}/debian/changelog is another site's release history (started by {NOS_OIGNONS}, not by "
        f"package.maintainer = {POTAGER}); nothing was built\n"
        f"  hint: start this site's own with oignons-mail release --site {site_file} 0.1.0 "
        f'--message "First release for this site." (it creates {tmp_path}/potager.changelog; keep it beside the '
        "site file)"
    )


def test_a_sites_own_changelog_comes_first(source: Path, tmp_path: Path) -> None:
    (tmp_path / "nos.changelog").write_text(entry("5.0", NOS_OIGNONS), encoding="utf-8")
    assert changelog.require(tmp_path / "nos.toml", NOS_OIGNONS, source) == tmp_path / "nos.changelog"


def test_release_starts_then_extends_another_sites_own_changelog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DEBFULLNAME", raising=False)
    monkeypatch.delenv("DEBEMAIL", raising=False)
    shutil.copytree(REPO / "debian", tmp_path / "debian")
    site_file = tmp_path / "sites" / "potager.toml"
    site_file.parent.mkdir()
    shutil.copyfile(OTHER_SITE, site_file)
    monkeypatch.chdir(tmp_path)
    assert main(["release", "--site", str(site_file), "0.1.0", "--message", "First release for Le Potager."]) == 0
    assert capsys.readouterr().out == (
        f"oignons-mail (0.1.0) unstable; urgency=medium (new: {tmp_path}/sites/potager.changelog)\n"
    )
    assert main(["release", "--site", str(site_file), "0.2.0", "--message", "Slow transport 3s."]) == 0
    text = (tmp_path / "sites" / "potager.changelog").read_text(encoding="utf-8")
    trailers = [line for line in text.splitlines() if line.startswith(" -- ")]
    assert len(trailers) == 2
    assert all(line.startswith(f" -- {POTAGER}  ") for line in trailers)
    assert text.count("oignons-mail (") == 2
    assert "nos-oignons" not in text.lower()
    assert "Nos oignons" not in text
    # The default site's changelog is untouched.
    assert (tmp_path / "debian" / "changelog").read_bytes() == (REPO / "debian" / "changelog").read_bytes()


def test_release_for_another_sites_repository_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = tmp_path / "dist" / "repo" / "dists" / "stable"
    suite.mkdir(parents=True)
    (suite / "Release").write_text("Origin: potager.example.org\n", encoding="utf-8")
    history = tmp_path / "changelog"
    history.write_text(entry("0.1.0", NOS_OIGNONS), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    status = main(["release", "--site", str(DEFAULT_SITE), "0.2.0", "--message", "x", "--changelog", str(history)])
    assert status == 2
    assert "this repository belongs to the site potager.example.org" in capsys.readouterr().err
    assert history.read_text(encoding="utf-8") == entry("0.1.0", NOS_OIGNONS)
