"""A failing configuration changes nothing.

Starts from a configured Postfix (Debian's defaults plus the administrator's
own values for keys the package also sets), then makes the package's
postinst fail in two ways and checks that /etc/postfix is untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.system.conftest import configured_postfix, copy_package, package_file
from tests.system.debian_system import RELEASES, DebianSystem, Result

PACKAGE = "oignons-mail-smarthost"
# Everything the package may touch, byte for byte, and as Postfix reads it.
STATE = r"""
cd /etc/postfix
sha256sum main.cf master.cf
postconf -n
postconf -M
echo '--- hidden files (a staging copy would show here)'
ls -A /etc/postfix | grep '^[.]' || true
"""
ADMIN_VALUES = "postconf -e 'relayhost = [old-relay.example.org]' 'smtp_tls_loglevel = 2' 'mynetworks_style = subnet'"


@dataclass
class Story:
    before_package: str
    bad_hostname: Result
    after_bad_hostname: str
    configured: str
    failed_check: Result
    after_failed_check: str


def state(system: DebianSystem) -> str:
    return system.run(STATE).check("read the Postfix configuration").stdout


@pytest.fixture(scope="module", params=RELEASES)
def story(request: pytest.FixtureRequest, dist: Path) -> Iterator[Story]:
    with configured_postfix(request.param, ADMIN_VALUES) as system:
        deb = copy_package(system, package_file(dist, PACKAGE))
        before = state(system)
        bad_hostname = system.run(
            f"""echo '{PACKAGE} {PACKAGE}/hostname string -marcuse-' | debconf-set-selections
            apt-get install -y -q {deb}"""
        )
        after_bad_hostname = state(system)
        system.run(
            f"""set -e
            echo '{PACKAGE} {PACKAGE}/hostname string marcuse' | debconf-set-selections
            dpkg --configure -a"""
        ).check("configure with a good host name")
        configured = state(system)
        # A service whose program does not exist: `postfix check` refuses it.
        data = f"/usr/share/{PACKAGE}/master.cf"
        failed_check = system.run(
            f"""echo '-M broken/unix = broken unix - - n - - no-such-daemon' > {data}
            dpkg-reconfigure -f noninteractive {PACKAGE}"""
        )
        after_failed_check = state(system)
        system.run(f"rm {data} && dpkg-reconfigure -f noninteractive {PACKAGE}").check("reconfigure")
        yield Story(before, bad_hostname, after_bad_hostname, configured, failed_check, after_failed_check)


def test_a_bad_host_name_fails_with_a_clear_message(story: Story) -> None:
    assert story.bad_hostname.returncode != 0
    assert '"-marcuse-" is not a short host name' in story.bad_hostname.stderr, story.bad_hostname.stderr


def test_a_bad_host_name_leaves_postfix_as_it_was(story: Story) -> None:
    assert story.after_bad_hostname == story.before_package


def test_the_package_then_configures(story: Story) -> None:
    assert "relayhost = bulbe.$mydomain" in story.configured
    assert "myhostname = marcuse.$mydomain" in story.configured


def test_a_failing_check_fails_the_postinst_with_a_clear_message(story: Story) -> None:
    assert story.failed_check.returncode != 0
    assert "names programs that /usr/lib/postfix/sbin does not have: no-such-daemon -" in story.failed_check.stderr, (
        story.failed_check.stderr
    )
    assert "/etc/postfix is unchanged" in story.failed_check.stderr


def test_a_failing_check_leaves_postfix_as_it_was(story: Story) -> None:
    assert story.after_failed_check == story.configured
