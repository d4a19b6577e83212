"""A failing configuration changes nothing, and the next run converges.

Starts from a configured Postfix (Debian's defaults plus the administrator's
own values for keys the package also sets), installs the smarthost, then
makes its postinst fail, with real input, at each check postfix-apply makes:
each time the postinst fails with a message naming the cause, /etc/postfix
and /var/lib/oignons-mail-smarthost are byte for byte as before (every file
hashed, every name listed), and once the cause is fixed `dpkg --configure -a`
gives back exactly the configuration of a good run.  Then the debconf
answers the postinst validates: host name and relay pins, preseeded.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.system.conftest import TEST_SITE, configured_postfix, copy_package, package_file, package_for_site
from tests.system.debian_system import RELEASES, DebianSystem, Result

PACKAGE = "oignons-mail-smarthost"
DATA = f"/usr/share/{PACKAGE}"
# Every name, type and mode, and every file's hash, under what the package may touch.
TREES = f"""
find /etc/postfix /var/lib/{PACKAGE} -printf '%p %y %m\\n' | sort
find /etc/postfix /var/lib/{PACKAGE} -type f -exec sha256sum {{}} + | sort
"""
ADMIN_VALUES = "postconf -e 'relayhost = [old-relay.example.org]' 'smtp_tls_loglevel = 2' 'mynetworks_style = subnet'"
OLD_PIN = "ac:ad:75:7f:58:c3:cf:53:ef:a0:d2:e3:0a:64:3d:e9:a2:c4:58:28"
OTHER_SHA1 = "11:22:33:44:55:66:77:88:99:00:aa:bb:cc:dd:ee:ff:01:23:45:67"
A_SHA256 = "ab" * 32


def append(name: str, text: str) -> Callable[[Path], None]:
    def edit(data: Path) -> None:
        with (data / name).open("a", encoding="utf-8") as file:
            file.write(text)

    return edit


def replace(name: str, old: str, new: str) -> Callable[[Path], None]:
    def edit(data: Path) -> None:
        path = data / name
        text = path.read_text(encoding="utf-8")
        assert old in text, f"{old!r} not in {name}"
        path.write_text(text.replace(old, new), encoding="utf-8")

    return edit


# Broken releases: what each changes in the package's data, and what the
# postinst must say.
BROKEN_RELEASES = {
    "main.cf that postconf cannot parse": (
        append("main.cf", "smtpd_banner = ${unterminated\n"),
        "error: the new main.cf does not parse: postconf: warning: truncated macro reference",
    ),
    "master.cf naming a missing program": (
        append("master.cf", "-M broken/unix = broken unix - - n - - no-such-daemon\n"),
        "names programs that /usr/lib/postfix/sbin does not have: no-such-daemon -",
    ),
    "a configuration postfix check refuses": (
        append("main.cf", "mail_owner = no-such-user\n"),
        "the new configuration fails `postfix check'",
    ),
    "a table postmap cannot build": (
        replace("tables", "postalias hash:", "postalias cdb:"),
        "postalias cannot build the table /usr/share/oignons-mail-smarthost/tables.d/aliases",
    ),
}


@dataclass
class Failure:
    result: Result
    after: str
    converged: Result
    after_fix: str


@dataclass
class Story:
    before_package: str
    bad_hostname: Result
    after_bad_hostname: str
    configured: str
    settings: dict[str, str]
    failures: dict[str, Failure] = field(default_factory=dict)
    answers: dict[str, tuple[Result, str, dict[str, str]]] = field(default_factory=dict)
    node_name: str = ""


def trees(system: DebianSystem) -> str:
    return system.run(TREES).check("hash /etc/postfix and the record").stdout


def settings(system: DebianSystem) -> dict[str, str]:
    lines = system.run("postconf -n").check("postconf -n").stdout.splitlines()
    return dict(line.partition(" = ")[::2] for line in lines)


def fail_and_fix(system: DebianSystem, deb: str, mount: str, fix_command: str) -> Failure:
    """Install a release that fails, then fix the cause and configure again.

    `mount` makes /etc/postfix read-only or full for this one command (its
    mounts die with it): the trees are read in the same command.
    """
    inside = system.run(
        f"""{mount}
        dpkg -i {deb} >&2
        echo "dpkg exit status $?" >&2
        rm -f /etc/postfix/filler
        {TREES}"""
    )
    result = Result(0 if "dpkg exit status 0" in inside.stderr else 1, "", inside.stderr)
    converged = system.run(f"{fix_command}\ndpkg --configure -a")
    return Failure(result, inside.stdout, converged, trees(system))


# (A mount that fails stops the command: the case would test nothing.)
READ_ONLY = "mount --bind /etc/postfix /etc/postfix && mount -o remount,bind,ro /etc/postfix || exit 99"
# A copy of /etc/postfix on a tmpfs, then filled up.
FULL = """mkdir -p /root/postfix-copy && cp -a /etc/postfix/. /root/postfix-copy/ &&
mount -t tmpfs -o size=2m,mode=755 tmpfs /etc/postfix && cp -a /root/postfix-copy/. /etc/postfix/ || exit 99
# Never fill anything but that tmpfs.
[ "$(stat -f -c %T /etc/postfix)" = tmpfs ] || exit 99
dd if=/dev/zero of=/etc/postfix/filler bs=4k 2>/dev/null"""


@pytest.fixture(scope="module", params=RELEASES)
def story(request: pytest.FixtureRequest, dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    work = tmp_path_factory.mktemp("failures")
    base = package_file(dist, PACKAGE)
    version = base.name.split("_")[1]
    good_file = package_for_site(base, TEST_SITE, f"{version}+test1", work)
    with configured_postfix(request.param, ADMIN_VALUES) as system:
        good = copy_package(system, good_file)
        before = trees(system)
        bad_hostname = system.run(
            f"""echo '{PACKAGE} {PACKAGE}/hostname string -marcuse-' | debconf-set-selections
            apt-get install -y -q {good}"""
        )
        after_bad_hostname = trees(system)
        system.run(
            f"""set -e
            echo '{PACKAGE} {PACKAGE}/hostname string marcuse' | debconf-set-selections
            dpkg --configure -a"""
        ).check("configure with a good host name")
        shutil.copytree(system.root / DATA.lstrip("/"), system.root / "root/good-data")
        story = Story(before, bad_hostname, after_bad_hostname, trees(system), settings(system))
        restore_data = f"rm -rf {DATA} && cp -a /root/good-data {DATA}"
        for number, (case, (edit, _)) in enumerate(BROKEN_RELEASES.items(), start=1):
            broken = package_for_site(base, TEST_SITE, f"{version}+test1+broken{number}", work, edit)
            story.failures[case] = fail_and_fix(system, copy_package(system, broken), "", restore_data)
        # bookworm's minimal system has no mount(8).
        system.run("command -v mount >/dev/null || apt-get install -y -q mount").check("install mount")
        story.failures["a read-only /etc/postfix"] = fail_and_fix(system, good, READ_ONLY, "")
        story.failures["a full /etc/postfix"] = fail_and_fix(system, good, FULL, "")
        for answer in (
            "zz:ad:75:7f:58:c3:cf:53:ef:a0:d2:e3:0a:64:3d:e9:a2:c4:58:28",
            OLD_PIN[:-1],
            f"{OLD_PIN} {A_SHA256}",
            f"{OLD_PIN.upper()},{OTHER_SHA1}",
            A_SHA256,
            "",
        ):
            result = system.run(
                f"""echo '{PACKAGE} {PACKAGE}/relay-pins string {answer}' | debconf-set-selections
                dpkg -i {good}"""
            )
            story.answers[f"pins {answer!r}"] = (result, trees(system), settings(system))
        for answer in ("mar.cuse", ""):
            result = system.run(
                f"""echo '{PACKAGE} {PACKAGE}/hostname string {answer}' | debconf-set-selections
                dpkg -i {good}"""
            )
            story.answers[f"hostname {answer!r}"] = (result, trees(system), settings(system))
        story.node_name = system.run("uname -n").check("uname").stdout.strip().split(".")[0]
        yield story


def test_a_bad_host_name_fails_with_a_clear_message(story: Story) -> None:
    assert story.bad_hostname.returncode != 0
    assert '"-marcuse-" is not a short host name' in story.bad_hostname.stderr, story.bad_hostname.stderr


def test_a_bad_host_name_leaves_postfix_as_it_was(story: Story) -> None:
    assert story.after_bad_hostname == story.before_package


def test_the_package_then_configures(story: Story) -> None:
    assert story.settings["relayhost"] == "bulbe.$mydomain"
    assert story.settings["myhostname"] == "marcuse.$mydomain"


@pytest.mark.parametrize("case", [*BROKEN_RELEASES, "a read-only /etc/postfix", "a full /etc/postfix"])
def test_a_failing_release_fails_the_postinst_naming_the_cause(story: Story, case: str) -> None:
    result = story.failures[case].result
    assert result.returncode != 0
    output = result.stdout + result.stderr
    expected = {
        "a read-only /etc/postfix": f"{PACKAGE}: error: cannot write to /etc/postfix; it is unchanged",
        "a full /etc/postfix": "No space left on device",
    }.get(case) or BROKEN_RELEASES[case][1]
    assert expected in output, output[-3000:]
    assert "/etc/postfix is unchanged" in output or "it is unchanged" in output, output[-3000:]


@pytest.mark.parametrize("case", [*BROKEN_RELEASES, "a read-only /etc/postfix", "a full /etc/postfix"])
def test_a_failing_release_changes_no_byte_of_postfix_or_the_record(story: Story, case: str) -> None:
    assert story.failures[case].after == story.configured


@pytest.mark.parametrize("case", [*BROKEN_RELEASES, "a read-only /etc/postfix", "a full /etc/postfix"])
def test_fixing_the_cause_and_configuring_again_converges(story: Story, case: str) -> None:
    failure = story.failures[case]
    failure.converged.check(f"dpkg --configure -a after {case}")
    assert failure.after_fix == story.configured


@pytest.mark.parametrize(
    "answer",
    [
        "zz:ad:75:7f:58:c3:cf:53:ef:a0:d2:e3:0a:64:3d:e9:a2:c4:58:28",  # not hex
        OLD_PIN[:-1],  # one hex digit short
        f"{OLD_PIN} {A_SHA256}",  # sha1 and sha256 mixed
    ],
)
def test_bad_pins_fail_and_change_nothing(story: Story, answer: str) -> None:
    result, after, _ = story.answers[f"pins {answer!r}"]
    assert result.returncode != 0
    assert f'relay pins "{answer}" are not all sha1 or all sha256 hex digests' in result.stderr, result.stderr
    assert after == story.configured


def test_pins_in_upper_case_and_with_commas_are_normalised(story: Story) -> None:
    result, _, values = story.answers[f"pins {f'{OLD_PIN.upper()},{OTHER_SHA1}'!r}"]
    result.check("upper-case pins")
    assert values["smtp_tls_fingerprint_digest"] == "sha1"
    assert values["smtp_tls_fingerprint_cert_match"] == f"{OLD_PIN} {OTHER_SHA1}"


def test_a_sha256_pin_sets_the_digest(story: Story) -> None:
    result, _, values = story.answers[f"pins {A_SHA256!r}"]
    result.check("a sha256 pin")
    assert values["smtp_tls_fingerprint_digest"] == "sha256"
    assert values["smtp_tls_fingerprint_cert_match"] == A_SHA256


def test_no_pins_means_the_packaged_ones_again_byte_for_byte(story: Story) -> None:
    result, after, values = story.answers["pins ''"]
    result.check("no pins")
    assert values["smtp_tls_fingerprint_cert_match"] == OLD_PIN
    assert after == story.configured


def test_a_host_name_with_a_dot_fails_and_changes_nothing(story: Story) -> None:
    result, after, _ = story.answers["hostname 'mar.cuse'"]
    assert result.returncode != 0
    assert '"mar.cuse" is not a short host name' in result.stderr, result.stderr
    assert after == story.configured


def test_an_empty_host_name_means_the_machines_own(story: Story) -> None:
    result, _, values = story.answers["hostname ''"]
    result.check("empty host name")
    assert values["myhostname"] == f"{story.node_name}.$mydomain"
