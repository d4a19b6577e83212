"""Install and apply figures, in chroots made from the system tests' cached base systems.

- install_seconds: `apt-get install oignons-mail-smarthost` on a fresh
  bookworm system with exim4 (tests/system's EXIM4_SYSTEM base), from a
  local file:// repository holding every package it needs (downloaded
  once beforehand), so that no download is timed;
- maintainer_scripts_seconds: the part of that install spent configuring
  oignons-mail-smarthost (its postinst, and any trigger run of it): from
  each "half-configured" to the next state dpkg reports for the package,
  read from dpkg's --status-logger with a timestamp per line;
- apply_seconds_relay: `postfix-apply apply oignons-mail-relay SETTINGS`
  on an installed relay when nothing is to change (what the relay's
  trigger runs), with the settings file its postinst passed.  When its
  median is over 1 s, a profile (bash -x with a timestamp per command) is
  written to build/bench/postfix-apply-profile.txt.
"""

from __future__ import annotations

import itertools
import re
import shutil
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from tests.e2e.testbed import RELAY_PACKAGES
from tests.system.debian_system import EXIM4_SYSTEM, DebianSystem, base_tarball, run_command

from bench.measure import Figure

ROOT = Path(__file__).resolve().parents[1]
DIST = ROOT / "dist"
WORK = ROOT / "build" / "bench"
REPOSITORY = WORK / "repo"
RELEASE = "bookworm"
SMARTHOST = "oignons-mail-smarthost"
RELAY = "oignons-mail-relay"
PRESEED_NODE_NAME = f"echo '{SMARTHOST} {SMARTHOST}/hostname string marcuse' | debconf-set-selections"
REPOSITORY_IN_SYSTEM = "/srv/bench-repo"
# One timestamped line per package state change (dpkg --status-logger).
STATUS_LOGGER = '#!/bin/sh\nwhile IFS= read -r line; do echo "$(date +%s.%N) $line"; done >> /root/dpkg-status.log\n'
STATUS_LINE = re.compile(rf"^(\d+\.\d+) status: {SMARTHOST}(?::\w+)?: (\S+)$")
APPLY_TARGET_SECONDS = 1.0
PROFILE = WORK / "postfix-apply-profile.txt"


def package(name: str) -> Path:
    found = sorted(DIST.glob(f"{name}_*_all.deb"))
    if len(found) != 1:
        raise RuntimeError(f"expected one {name} package in {DIST} (make deb), found {found}")
    return found[0]


def make_repository(tarball: Path) -> None:
    """A file:// repository with the smarthost package and what it needs over exim4."""
    if REPOSITORY.exists():
        shutil.rmtree(REPOSITORY)
    REPOSITORY.mkdir(parents=True)
    system = DebianSystem(tarball, RELEASE)
    try:
        deb = system.copy_in(package(SMARTHOST), f"/root/{package(SMARTHOST).name}")
        system.run(f"set -e; apt-get update -q; apt-get clean; apt-get install -y -q --download-only {deb}").check(
            "download what oignons-mail-smarthost needs"
        )
        for downloaded in (system.root / "var/cache/apt/archives").glob("*.deb"):
            shutil.copy(downloaded, REPOSITORY)
    finally:
        system.remove()
    shutil.copy(package(SMARTHOST), REPOSITORY)
    # The index names the files relative to the repository: run it there.
    index = run_command(["sh", "-c", f"cd {REPOSITORY} && apt-ftparchive packages ."], timeout=120)
    (REPOSITORY / "Packages").write_text(index.check("apt-ftparchive packages").stdout)


def install_run(tarball: Path) -> tuple[float, float]:
    """One install on a fresh system: (its seconds, the seconds configuring our package)."""
    system = DebianSystem(tarball, RELEASE)
    try:
        shutil.copytree(REPOSITORY, system.root / REPOSITORY_IN_SYSTEM.lstrip("/"))
        for listing in (system.root / "etc/apt").glob("sources.list.d/*"):
            listing.unlink()
        (system.root / "etc/apt/sources.list").write_text(f"deb [trusted=yes] file:{REPOSITORY_IN_SYSTEM} ./\n")
        logger = system.root / "root/dpkg-status-logger"
        logger.write_text(STATUS_LOGGER)
        logger.chmod(0o755)
        result = system.run(
            f"""set -e
            apt-get update -q >/dev/null
            {PRESEED_NODE_NAME}
            start=$(date +%s.%N)
            apt-get install -y -q -o DPkg::Options::=--status-logger=/root/dpkg-status-logger {SMARTHOST}
            end=$(date +%s.%N)
            test -n "$(postconf -h relayhost)"
            echo "bench-install $start $end"
            """
        ).check(f"apt-get install {SMARTHOST} over exim4")
        found = re.search(r"^bench-install (\S+) (\S+)$", result.stdout, re.MULTILINE)
        if found is None:
            raise RuntimeError(f"no timing line in:\n{result.stdout[-2000:]}")
        return float(found.group(2)) - float(found.group(1)), configuring_seconds(system.read("/root/dpkg-status.log"))
    finally:
        system.remove()


def configuring_seconds(status_log: str) -> float:
    """The seconds from each "half-configured" of the package to its next state."""
    total, since = 0.0, None
    for line in status_log.splitlines():
        found = STATUS_LINE.match(line)
        if found is None:
            continue
        stamp, state = float(found.group(1)), found.group(2)
        if since is not None:
            total += stamp - since
        since = stamp if state == "half-configured" else None
    if total == 0.0:
        raise RuntimeError(f"dpkg never reported {SMARTHOST} half-configured then configured:\n{status_log[-3000:]}")
    return total


def install_figures(runs: int) -> list[Figure]:
    tarball = base_tarball(RELEASE, EXIM4_SYSTEM)
    make_repository(tarball)
    install = Figure("install_seconds", "s", "")
    scripts = Figure("maintainer_scripts_seconds", "s", "")
    share = Figure("maintainer_scripts_share", "%", "<= 20")
    for _ in range(runs):
        whole, ours = install_run(tarball)
        install.values.append(whole)
        scripts.values.append(ours)
        share.values.append(100 * ours / whole)
    install.note = f"apt-get install {SMARTHOST} over exim4, {RELEASE} chroot, local file:// repository"
    scripts.note = f"dpkg configuring {SMARTHOST} (postinst), from dpkg --status-logger timestamps"
    return [install, scripts, share]


# --- the relay's apply with nothing to change -------------------------------

WRAPPER = f"""#!/bin/sh
# bench: keep the settings file the postinst passes, then run the real script.
[ -z "$3" ] || cp "$3" /root/bench-settings
exec /usr/lib/{RELAY}/postfix-apply.real "$@"
"""


def prepare_relay_system(
    tarball: Path, deb_file: Path, before_install: Callable[[DebianSystem], None] | None = None
) -> DebianSystem:
    """A relay base system with oignons-mail-relay installed, its postfix-apply wrapped by WRAPPER."""
    system = DebianSystem(tarball, RELEASE)
    try:
        if before_install is not None:
            before_install(system)
        _install_relay(system, deb_file)
    except BaseException:
        system.remove()
        raise
    return system


def _install_relay(system: DebianSystem, deb_file: Path) -> None:
    script = f"/usr/lib/{RELAY}/postfix-apply"
    wrapper = system.root / script.lstrip("/")
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    system.run(f"dpkg-divert --quiet --rename --divert {script}.real --add {script}").check("dpkg-divert")
    wrapper.write_text(WRAPPER)
    wrapper.chmod(0o755)
    # The relay's postinst reads /etc/postfix/oignons-mail/aliases, which
    # postfix-apply no longer writes (the sources are in /var/lib/PACKAGE/tables.d):
    # without this file its install fails when Schleuder is installed.
    # Not the bench's to fix; the file changes nothing that is measured.
    (system.root / "etc/postfix/oignons-mail").mkdir(parents=True, exist_ok=True)
    (system.root / "etc/postfix/oignons-mail/aliases").touch()
    deb = system.copy_in(deb_file, f"/root/{deb_file.name}")
    system.run(f"set -e; dpkg -i {deb}").check(f"dpkg -i {RELAY}")


def apply_figures(runs: int) -> list[Figure]:
    system = prepare_relay_system(base_tarball(RELEASE, RELAY_PACKAGES), package(RELAY))
    try:
        script = f"/usr/lib/{RELAY}/postfix-apply"
        command = f"{script}.real apply {RELAY} /root/bench-settings"
        figure = Figure("apply_seconds_relay", "s", "<= 1")
        for _ in range(runs + 1):  # the first, untimed, shows what a no-change run prints
            result = system.run(
                f'set -e; start=$(date +%s.%N); {command}; end=$(date +%s.%N); echo "bench-apply $start $end"'
            ).check("postfix-apply apply on the relay")
            found = re.search(r"^bench-apply (\S+) (\S+)$", result.stdout, re.MULTILINE)
            if found is None:
                raise RuntimeError(f"no timing line in:\n{result.stdout[-2000:]}")
            figure.values.append(float(found.group(2)) - float(found.group(1)))
        figure.values.pop(0)
        figure.note = f"{RELAY} installed in a {RELEASE} chroot (Postfix not running: no reload)"
        if figure.median > APPLY_TARGET_SECONDS:
            PROFILE.write_text(profile(system, command))
            figure.note += f"; over 1 s: per-command profile in {PROFILE.relative_to(ROOT)}"
        return [figure]
    finally:
        system.remove()


def profile(system: DebianSystem, command: str) -> str:
    """Where a run of postfix-apply spends its time: bash -x, one timestamp per command."""
    result = system.run(
        f"PS4='+ $EPOCHREALTIME $LINENO ' BASH_XTRACEFD=2 bash -x {command} 2>/root/trace >/dev/null; cat /root/trace"
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("+")]
    spent: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    stamps = []
    for line in lines:
        parts = line.lstrip("+").split(" ", 3)
        if len(parts) == 4:
            try:
                stamps.append((float(parts[1]), f"line {parts[2]}: {parts[3][:90]}"))
            except ValueError:
                continue
    for (stamp, what), (following, _) in itertools.pairwise(stamps):
        key = what.split(":", 1)[0] + ": " + what.split(": ", 1)[1].split(" ", 1)[0]
        spent[key] += following - stamp
        count[key] += 1
    total = stamps[-1][0] - stamps[0][0] if stamps else 0.0
    rows = sorted(spent.items(), key=lambda item: -item[1])[:25]
    return (
        f"postfix-apply apply {RELAY} with nothing to change, traced with bash -x: {total:.3f} s\n"
        "seconds  calls  line and command (time until the next traced command)\n"
        + "".join(f"{seconds:7.3f}  {count[key]:5d}  {key}\n" for key, seconds in rows)
    )
