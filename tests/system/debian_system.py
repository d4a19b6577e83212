"""Real Debian systems for the install tests: cached mmdebstrap tarballs, chroots.

A base system is built once per (release, package set) with mmdebstrap and
kept as a tarball in the cache (OIGNONS_MAIL_CACHE, default
~/.cache/oignons-mail); each test extracts a fresh copy.  Every command runs
in its own mount and PID namespace: the mounts it makes and the daemons it
starts die with it, so nothing is left behind on the host.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
RELEASES = ("bookworm", "trixie")
# A standard Debian install's MTA and mail client, which the packages replace.
EXIM4_SYSTEM = ("exim4", "exim4-daemon-light", "bsd-mailx", "apt-utils", "ca-certificates")
# A cached base older than this is rebuilt, so that it follows point releases.
MAX_BASE_AGE_SECONDS = 7 * 86400
MMDEBSTRAP_TIMEOUT = 900
COMMAND_TIMEOUT = 600


def cache_directory() -> Path:
    configured = os.environ.get("OIGNONS_MAIL_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "oignons-mail"


def base_tarball(release: str, packages: tuple[str, ...], customize: tuple[str, ...] = ()) -> Path:
    """The cached base system of `release` with `packages`, built if missing or old.

    `customize`: mmdebstrap --customize-hook commands (run with the mirror
    still reachable, before mmdebstrap's cleanup), part of the cache key.
    """
    description = f"{release} {MIRROR} {' '.join(sorted(packages))}"
    if customize:
        description += " " + " ".join(customize)
    key = hashlib.sha256(description.encode()).hexdigest()[:12]
    tarball = cache_directory() / f"{release}-{key}.tar"
    if tarball.is_file() and time.time() - tarball.stat().st_mtime < MAX_BASE_AGE_SECONDS:
        return tarball
    tarball.parent.mkdir(parents=True, exist_ok=True)
    # Of this process: runs side by side (pytest-xdist) may build the same base.
    partial = tarball.with_suffix(f".partial-{os.getpid()}.tar")
    command = [
        "mmdebstrap",
        "--variant=apt",
        "--mode=root",
        f"--include={','.join(packages)}",
        *(f"--customize-hook={hook}" for hook in customize),
        release,
        str(partial),
        MIRROR,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=MMDEBSTRAP_TIMEOUT, check=False)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"mmdebstrap failed for {release}:\n{result.stderr[-4000:]}")
    partial.rename(tarball)  # atomic: a half-written base is never used
    return tarball


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def check(self, what: str) -> Result:
        if self.returncode != 0:
            raise AssertionError(
                f"{what} failed with status {self.returncode}\n--- stdout\n{self.stdout[-6000:]}"
                f"\n--- stderr\n{self.stderr[-6000:]}"
            )
        return self


# The environment of every command the tests run, on the host or in a test
# system: Debian's tools first, no locale or terminal of the caller's.
COMMAND_ENVIRONMENT = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C.UTF-8",
    "HOME": "/root",
}


def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    input_text: str | None = None,
    environment: Mapping[str, str] | None = None,
    description: str | None = None,
) -> Result:
    """Run a host command with a time limit; the caller checks the status."""
    try:
        completed = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(environment or COMMAND_ENVIRONMENT),
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        what = description if description is not None else shlex.join(argv)
        raise AssertionError(f"timed out after {timeout:.0f}s: {what}") from expired
    return Result(completed.returncode, completed.stdout, completed.stderr)


class DebianSystem:
    """An extracted base system, run with chroot in private namespaces."""

    def __init__(self, tarball: Path, release: str) -> None:
        self.release = release
        self.root = Path(tempfile.mkdtemp(prefix=f"oignons-mail-{release}-"))
        subprocess.run(["tar", "-C", str(self.root), "-xf", str(tarball)], check=True, timeout=300)
        shutil.copyfile("/etc/resolv.conf", self.root / "etc/resolv.conf")
        # Maintainer scripts must not start daemons outside the test's control.
        policy = self.root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)

    def run(self, script: str, timeout: int = COMMAND_TIMEOUT) -> Result:
        """Run a sh script as root inside the system; its processes die with it."""
        root = shlex.quote(str(self.root))
        inner = f"mount -t proc proc {root}/proc && exec chroot {root} /bin/sh -c {shlex.quote(script)}"
        command = [
            "unshare",
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--propagation",
            "private",
            "sh",
            "-c",
            inner,
        ]
        return run_command(command, timeout=timeout, description=script)

    def copy_in(self, source: Path, target: str) -> str:
        destination = self.root / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
        return target

    def read(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text(encoding="utf-8")

    def remove(self) -> None:
        # A mount left under the root would make rm -rf reach into it: refuse.
        with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
            mounts = [line.split()[4] for line in mountinfo]
        leftovers = [mount for mount in mounts if mount.startswith(str(self.root))]
        if leftovers:
            raise RuntimeError(f"mounts left under {self.root}: {leftovers}")
        shutil.rmtree(self.root)
