"""A second site, bootstrapped end to end the way README.md's quick start says.

The site is tests/golden/other-site/in/site.toml ("Le Potager": another
domain, relay host courgette, nodes radis and navet, no Mailman, no
Schleuder, one slow transport) with the test keys' pins.  Its first release
is published with README's own `make repo` line (step 8) in a copy of the
tree, with a signing home of its own; the fleet harness (tests/e2e/fleet.py)
boots its relay and one node (radis, still on exim4) on the test network,
and the node is bootstrapped with README's two commands (step 9), taken from
README.md: if they change or break, this test fails.

One pair only (relay trixie, node bookworm): what differs from the default
site is the site, not the releases, which tests/e2e/test_fleet.py already
crosses; one booted pair keeps this case to a few minutes of CPU.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e.fleet import (
    README_REPO_URI,
    REPO_URI,
    Fleet,
    FleetSite,
    build_published_site,
    fleet,
    fleet_base,
    readme_commands,
)
from tests.e2e.machines import leftovers_of_run, sweep_killed_runs
from tests.e2e.mail import compose, wait_for_delivery
from tests.e2e.testbed import OUTSIDE_DOMAIN, REPOSITORY, TEST_ALIAS
from tests.system.test_other_site import FIRST_SITE_NAMES, OTHER_SITE, SOFTWARE_LINES, TOOL_FILES

ROOT_DESTINATION = f"{TEST_ALIAS[0]}@{OUTSIDE_DOMAIN}"
# root_alias is admins@potager.example.org: an alias the relay's administrator keeps in /etc/aliases.
POTAGER = FleetSite(
    "potager.example.org",
    "courgette",
    (("radis", "bookworm"),),
    schleuder_list=False,
    relay_aliases=(f"admins: {ROOT_DESTINATION}",),
    node_certificate=True,
)
WORK = REPOSITORY / "build" / "e2e-other-site"
NODE = "radis"
SITE_PACKAGES = ("oignons-mail-archive-keyring", "oignons-mail-smarthost", "oignons-mail")
TIMEOUT = 600.0
# Every line of every file the site's packages installed on the node, "\-" read as "-".
INSTALLED_LINES = (
    "dpkg -L " + " ".join(SITE_PACKAGES) + " | sort -u | while read -r f; do"
    ' if [ -f "$f" ] && [ ! -L "$f" ]; then case "$f" in *.gz) zcat "$f" ;; *) cat "$f" ;; esac'
    ' | sed "s/\\\\\\\\-/-/g" | grep -n "" | sed "s|^|$f:|"; fi; done'
)


@pytest.fixture(scope="module")
def bed() -> Iterator[Fleet]:
    if os.geteuid() != 0:
        pytest.fail("the test boots containers and makes network namespaces: run it as root (make e2e)")
    for leftover in sweep_killed_runs():
        print(f"removed the leftover of a killed run: {leftover}")
    fleet_base("relay", "trixie")
    fleet_base("node", "bookworm")
    artifacts = build_published_site(POTAGER, OTHER_SITE, WORK)
    try:
        with fleet(artifacts) as result:
            yield result
    finally:
        subprocess.run(["gpgconf", "--homedir", str(artifacts.gnupg_home), "--kill", "all"],
                       capture_output=True, timeout=30, check=False)  # fmt: skip
    leftovers = leftovers_of_run(os.getpid())
    assert leftovers == [], "the test left behind:\n" + "\n".join(leftovers)


def test_readme_bootstrap_then_mail_origin_and_no_first_site_name(bed: Fleet) -> None:
    node = bed.nodes[NODE]
    commands = readme_commands("9.")
    assert len(commands) == 2, f"README's step 9 changed: {commands}"
    assert README_REPO_URI in commands[0], f"README's step 9 changed: {commands}"
    # The administrator answers apt's question; the commands are README's, character for character.
    node.check("echo 'APT::Get::Assume-Yes \"true\";' > /etc/apt/apt.conf.d/90e2e-assume-yes")
    for readme_command in commands:
        command = readme_command.replace(README_REPO_URI, REPO_URI)
        result = node.run(command, timeout=TIMEOUT)
        print(f"=== {NODE}: {command} (status {result.returncode})\n{result.stdout[-1500:]}{result.stderr[-1500:]}")
        result.check(command)
    assert node.run("dpkg-query -W -f='${db:Status-Status}' exim4-daemon-light").stdout.strip() != "installed"

    policy = node.check("apt-cache policy")
    origin = [line.strip() for line in policy.splitlines() if "o=potager.example.org" in line]
    print("=== apt-cache policy:", *origin, sep="\n")
    assert origin, policy
    recommends = node.check("dpkg-query -W -f='${Recommends}' oignons-mail-archive-keyring")
    assert "unattended-upgrades" in recommends
    assert node.check("dpkg-query -W -f='${db:Status-Status}' unattended-upgrades").strip() == "installed"
    allowed = node.check("unattended-upgrade --dry-run -v 2>&1 | grep -i 'allowed origins' || true")
    print("=== unattended-upgrade:", allowed.strip())
    assert "potager.example.org" in allowed

    message_id = f"bootstrap.{NODE}@e2e.{OUTSIDE_DOMAIN}"
    node.check("/usr/sbin/sendmail -oi root", input_text=compose(message_id, f"{NODE} bootstrap", message_id))
    sent = wait_for_delivery(bed, node, message_id, r"relay=courgette\.potager\.example\.org\[.*status=sent", TIMEOUT)
    forwarded = wait_for_delivery(bed, bed.relay, message_id, rf"to=<{re.escape(ROOT_DESTINATION)}>.*status=sent",
                                  TIMEOUT)  # fmt: skip
    print(f"=== delivery on {NODE}\n{sent}\n=== delivery on courgette\n{forwarded}")
    # Through the administrator's own alias (/etc/aliases), which local(8) expanded.
    alias = r"to=<admins@potager\.example\.org>, relay=local, .*forwarded as"
    expanded = wait_for_delivery(bed, bed.relay, message_id, alias, TIMEOUT)
    print(f"=== the alias on courgette\n{expanded}")
    assert any(message_id in m.data for m in bed.sink.messages_to(ROOT_DESTINATION))

    found = []
    for line in node.check(INSTALLED_LINES, timeout=120).splitlines():
        path, _, text = line.partition(":")
        text = text.partition(":")[2]
        if path.lstrip("/").startswith(TOOL_FILES) or text.strip() in SOFTWARE_LINES:
            continue
        if any(name in text.lower() for name in FIRST_SITE_NAMES):
            found.append(line)
    live = node.check("postconf -n")
    found += [f"postconf -n: {line}" for line in live.splitlines() if any(n in line.lower() for n in FIRST_SITE_NAMES)]
    assert found == []
