"""The relay's DKIM keys when rspamd comes AFTER the package: made by the trigger, kept, purged.

rspamd itself is big; a stand-in package named rspamd ships /usr/bin/rspamadm
(whose dkim_keygen writes an RSA key with openssl, root-owned and mode 0644,
as the real one leaves its own defaults) and creates the _rspamd user in its
postinst, as Debian's does.  The end-to-end tests use the real rspamd,
installed before the package, and verify signatures made with the keys.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.conftest import configured_postfix, copy_package, package_file
from tests.system.debian_system import RELEASES, DebianSystem

PACKAGE = "oignons-mail-relay"
KEY_DIRECTORY = "/var/lib/rspamd/dkim"
KEY = f"{KEY_DIRECTORY}/nos-oignons.net.bulbe1.key"
ROTATED_KEY = f"{KEY_DIRECTORY}/nos-oignons.net.bulbe2.key"
ARC_KEY = f"{KEY_DIRECTORY}/nos-oignons.net.arc.key"  # rspamd's ARC seals (arc.conf)
FAKE_RSPAMADM = """#!/bin/sh
# Stand-in for rspamd's rspamadm: only `dkim_keygen -b BITS -s SEL -d DOMAIN -k FILE`.
set -e
[ "$1" = dkim_keygen ] || exit 1
shift
bits=1024
while [ $# -gt 0 ]; do
    case "$1" in
        -b) bits=$2; shift 2 ;;
        -k) file=$2; shift 2 ;;
        *) shift 2 ;;
    esac
done
umask 022
openssl genrsa -out "$file" "$bits" 2>/dev/null
echo "selector._domainkey IN TXT ( \\"v=DKIM1; k=rsa; p=...\\" )"
"""
FAKE_POSTINST = """#!/bin/sh
set -e
getent passwd _rspamd >/dev/null || adduser --system --group --quiet --home /var/lib/rspamd _rspamd
"""


def fake_rspamd(work: Path) -> Path:
    tree = work / "fake-rspamd"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        "Package: rspamd\nVersion: 0.0~fake1\nArchitecture: all\nMaintainer: test <test@example.org>\n"
        "Depends: adduser, openssl\nDescription: stand-in for rspamd's rspamadm (oignons-mail system test)\n",
        encoding="utf-8",
    )
    for path, text in ((tree / "DEBIAN/postinst", FAKE_POSTINST), (tree / "usr/bin/rspamadm", FAKE_RSPAMADM)):
        path.write_text(text, encoding="utf-8")
        path.chmod(0o755)
    target = work / "rspamd_0.0~fake1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(target)], check=True, timeout=60)
    return target


def key_state(system: DebianSystem, path: str) -> str:
    """'owner:group mode sha256' of a key file, or 'absent'."""
    result = system.run(f"if [ -e {path} ]; then stat -c '%U:%G %a' {path}; sha256sum < {path}; else echo absent; fi")
    return " ".join(result.check(f"stat {path}").stdout.split()[:3])


@pytest.fixture(scope="module", params=RELEASES)
def system(request: pytest.FixtureRequest) -> Iterator[DebianSystem]:
    with configured_postfix(request.param, "true") as result:
        yield result


def test_keys_made_when_rspamd_comes_later_kept_on_remove_deleted_on_purge(
    system: DebianSystem, dist: Path, tmp_path: Path
) -> None:
    relay = copy_package(system, package_file(dist, PACKAGE))
    rspamd = copy_package(system, fake_rspamd(tmp_path))
    system.run(f"apt-get install -y -q --no-install-recommends {relay}").check("install the relay package")
    assert key_state(system, KEY) == "absent", "a key without rspamd"

    installed = system.run(f"dpkg -i {rspamd}").check("dpkg -i the stand-in rspamd")
    made = key_state(system, KEY)
    assert made.startswith("_rspamd:_rspamd 640 "), f"{made}\n{installed.stdout}{installed.stderr}"
    public = system.run(f"openssl pkey -pubin -in {KEY_DIRECTORY}/nos-oignons.net.bulbe1.pub -noout").returncode
    assert public == 0, "no public key beside the private one"
    assert key_state(system, ARC_KEY).startswith("_rspamd:_rspamd 640 "), "no ARC key"

    system.run(f"apt-get install -y -q --reinstall {relay}").check("reinstall the relay package")
    assert key_state(system, KEY) == made, "the key changed on reinstall"

    system.run(f"/usr/lib/{PACKAGE}/dkim-keys make bulbe2").check("dkim-keys make bulbe2 (a rotation)")
    assert key_state(system, ROTATED_KEY).startswith("_rspamd:_rspamd 640 ")
    assert key_state(system, KEY) == made, "the old selector's key changed in a rotation"

    system.run(f"dpkg -r {PACKAGE}").check("dpkg -r")
    assert key_state(system, KEY) == made, "the key is gone after remove"
    system.run(f"dpkg -P {PACKAGE}").check("dpkg -P")
    assert key_state(system, KEY) == "absent", "the key survived purge"
    assert key_state(system, ROTATED_KEY) == "absent", "the rotated key survived purge"
    assert key_state(system, ARC_KEY) == "absent", "the ARC key survived purge"
