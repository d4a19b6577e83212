"""Build the end-to-end test bed: keys, a test site, the packages, two booted systems.

Once per session (`build_artifacts`): TLS keys for the relay, the node and a
stranger (openssl); their pins, computed with the project's pin helper; a
copy of sites/nos-oignons.toml holding those pins; the two packages built from
it into build/e2e/dist.

Once per pair of releases (`testbed`): a relay and a smarthost system
extracted from cached mmdebstrap tarballs, the packages installed into each
directory (a policy-rc.d keeps daemons from starting), the test network's own
settings added (DNS zones, test blocklist, short greylisting delay: test
settings only, never the packages'), both booted with systemd as PID 1, the
SMTP sink started, and a real Schleuder list created on the relay.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from oignons_mail.site import Site, load_site
from tests.e2e import machines
from tests.e2e.machines import (
    CLEAN_CLIENT_ADDRESS,
    LISTED_CLIENT_ADDRESS,
    RELAY_ADDRESS,
    RELAY_WORLD_ADDRESS,
    SINK_ADDRESS,
    SMARTHOST_ADDRESS,
    Container,
    TestNetwork,
    fresh_work_directory,
    run,
    wait_until,
)
from tests.system.debian_system import COMMAND_ENVIRONMENT, DebianSystem, Result, base_tarball

REPOSITORY = Path(__file__).resolve().parents[2]
WORK = REPOSITORY / "build" / "e2e"
SITE_SOURCE = REPOSITORY / "sites" / "nos-oignons.toml"
TOOL = ["/usr/bin/python3", "-m", "oignons_mail"]
TOOL_ENVIRONMENT = {**COMMAND_ENVIRONMENT, "PYTHONPATH": str(REPOSITORY / "src")}
BUILD_TIMEOUT = 900.0

DOMAIN = "nos-oignons.net"
RELAY_HOSTNAME = f"bulbe.{DOMAIN}"
SMARTHOST_NAME = "marcuse"
SMARTHOST_HOSTNAME = f"{SMARTHOST_NAME}.{DOMAIN}"
# The fake outside world: its MX is the sink; orange.fr gets the same MX.
OUTSIDE_DOMAIN = "elsewhere.test"
SINK_HOSTNAME = f"mx.{OUTSIDE_DOMAIN}"
BLOCKLIST_ZONE = "blocklist.elsewhere.test"
# An outside sender's domain that forbids all but its own server (SPF -all,
# DMARC p=reject): mail from it that the relay forwards must still pass.
STRICT_DOMAIN = f"strict.{OUTSIDE_DOMAIN}"
BLOCKLIST_SYMBOL = "OIGNONS_E2E_BLOCKLIST"
LIST_ADDRESS = f"machines@{DOMAIN}"
LIST_ADMIN = f"list-admin@{OUTSIDE_DOMAIN}"
# An administrator's own alias, in /etc/aliases (the packages leave it alone).
TEST_ALIAS = ("alice", f"alice@{OUTSIDE_DOMAIN}")
GREYLIST_DELAY_SECONDS = 5
UNBOUND_TEST_CONF = "/etc/unbound/unbound.conf.d/oignons-e2e.conf"
# Where the relay package makes rspamd's DKIM keys (relative to the root).
DKIM_DIRECTORY = "var/lib/rspamd/dkim"
# rspamd loads its configuration before it opens the milter socket: seconds
# when the machine is idle, more than a minute when it is loaded (seen here
# at a load average of 20 on two cores; bookworm's rspamd 3.4 the slowest).
RSPAMD_START_TIMEOUT = 240.0

# What the base systems hold besides Debian's minimal one: systemd to boot,
# the packages' dependencies, and on the relay what it recommends and the
# cases use (mailman3 too: lists created after the relay package must work).
COMMON_PACKAGES = (
    "systemd-sysv", "dbus", "iproute2", "procps", "postfix", "ssl-cert", "openssl",
    "ca-certificates", "bind9-dnsutils",
)  # fmt: skip
RELAY_PACKAGES = (
    *COMMON_PACKAGES, "python3", "adduser", "rspamd", "redis-server", "unbound",
    "dns-root-data", "schleuder", "schleuder-cli", "gnupg", "mailman3",
)  # fmt: skip
SMARTHOST_PACKAGES = COMMON_PACKAGES

# The most `systemd-analyze security` may rate the relay's Postfix unit.
MAX_EXPOSURE = 3.0

# The unit that runs Postfix's main instance (shared/postfix-on-debian.md).
MAIN_POSTFIX_UNIT = {"bookworm": "postfix@-.service", "trixie": "postfix.service"}


@dataclass(frozen=True)
class KeyPair:
    certificate: Path
    key: Path
    pins: dict[str, str]  # {"sha1": "aa:bb:...", "sha256": ...} from `oignons-mail pin --cert`


@dataclass(frozen=True)
class Artifacts:
    """What every test bed of the session shares."""

    work: Path
    site_file: Path
    site: Site
    relay_key: KeyPair
    node_key: KeyPair
    stranger_key: KeyPair
    relay_deb: Path
    smarthost_deb: Path


def tool(*arguments: str, timeout: float = 120.0) -> Result:
    return run([*TOOL, *arguments], timeout=timeout, environment=TOOL_ENVIRONMENT)


def parse_pins(output: str) -> dict[str, str]:
    pins = {}
    for line in output.splitlines():
        digest, _, value = line.partition(" ")
        if digest in ("sha1", "sha256"):
            pins[digest] = value.strip()
    if set(pins) != {"sha1", "sha256"}:
        raise AssertionError(f"`oignons-mail pin` printed no sha1 and sha256 pins:\n{output}")
    return pins


def make_key_pair(directory: Path, name: str) -> KeyPair:
    certificate, key = directory / f"{name}.pem", directory / f"{name}.key"
    run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
         "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
         "-keyout", str(key), "-out", str(certificate)]
    ).check(f"openssl req for {name}")  # fmt: skip
    pins = parse_pins(tool("pin", "--cert", str(certificate)).check("oignons-mail pin --cert").stdout)
    return KeyPair(certificate, key, pins)


def write_test_site(relay_pin: str, node_pins: Mapping[str, str], target: Path) -> Path:
    """sites/nos-oignons.toml with the test keys' pins (node name: pin), and the relay's outside address in SPF.

    In the test network the relay sends to the outside world from its second
    address (RELAY_WORLD_ADDRESS), which its name's A record does not hold.
    """
    text = SITE_SOURCE.read_text(encoding="utf-8")
    spf = f'spf = "v=spf1 mx ip4:{RELAY_WORLD_ADDRESS} -all"'
    text, spf_count = re.subn(r'(?m)^spf = "v=spf1 mx -all"$', spf, text)
    text, relay_count = re.subn(r"(?m)^relay_pins = \[.*\]$", f'relay_pins = ["{relay_pin}"]', text)
    pins = ", ".join(f'{name} = "{pin}"' for name, pin in node_pins.items())
    text, node_count = re.subn(r"(?m)^node_pins = \{.*\}$", f"node_pins = {{ {pins} }}", text)
    if (relay_count, node_count, spf_count) != (1, 1, 1):
        raise AssertionError(
            f"{SITE_SOURCE} no longer has one `relay_pins = [...]` line, one `node_pins = {{...}}` line"
            f' and one `spf = "v=spf1 mx -all"` line (found {relay_count}, {node_count} and {spf_count}):'
            " update tests/e2e/testbed.py"
        )
    target.write_text(text, encoding="utf-8")
    tool("validate", str(target)).check(f"oignons-mail validate {target}")
    return target


def build_artifacts(work: Path = WORK) -> Artifacts:
    keys = fresh_work_directory(work) / "keys"
    keys.mkdir()
    relay_key = make_key_pair(keys, RELAY_HOSTNAME)
    node_key = make_key_pair(keys, SMARTHOST_HOSTNAME)
    stranger_key = make_key_pair(keys, f"stranger.{OUTSIDE_DOMAIN}")
    site = load_site(SITE_SOURCE)
    # The relay is pinned with the site's digest; the nodes always with sha256.
    site_file = write_test_site(
        relay_key.pins[site.smarthost.fingerprint_digest], {SMARTHOST_NAME: node_key.pins["sha256"]}, work / "site.toml"
    )
    environment = {**TOOL_ENVIRONMENT, "DEB_BUILD_OPTIONS": "nocheck"}  # make check runs the unit tests
    result = run(
        [*TOOL, "build", "--site", str(site_file), "--work", str(work / "pkg"), "--dist", str(work / "dist")],
        timeout=BUILD_TIMEOUT,
        environment=environment,
    )
    result.check("oignons-mail build of the test site")
    debs = {role: sorted((work / "dist").glob(f"oignons-mail-{role}_*_all.deb")) for role in ("relay", "smarthost")}
    for role, found in debs.items():
        if len(found) != 1:
            raise AssertionError(f"expected one oignons-mail-{role} package in {work / 'dist'}, found {found}")
    return Artifacts(
        work, site_file, load_site(site_file), relay_key, node_key, stranger_key, debs["relay"][0], debs["smarthost"][0]
    )


@contextmanager
def prefetch_base_systems(pairs: Sequence[tuple[str, str]]) -> Iterator[None]:
    """Build the missing cached base systems of every pair in the background.

    mmdebstrap waits mostly on downloads and dpkg: two at a time, beside the
    package build, save minutes on a first run.  The body runs meanwhile; on
    exit every build has ended (a failure shows again, with its reason, when
    the test bed asks for that base system).
    """
    wanted = sorted({(relay, RELAY_PACKAGES) for relay, _ in pairs} | {(node, SMARTHOST_PACKAGES) for _, node in pairs})
    with ThreadPoolExecutor(max_workers=2) as pool:
        for release, packages in wanted:
            pool.submit(base_tarball, release, packages)
        yield


# --- The test network's own settings (never part of the packages) ---------


def site_dns_lines(site_file: Path, relay_certificate: Path, dkim_directory: Path) -> list[str]:
    """The site's own records as `oignons-mail dns` prints them (zone-file lines, comments left out).

    The relay's certificate gives the TLSA records, the DKIM public keys are
    those the relay package made on the relay (dkim_directory, in its root).
    """
    result = tool("dns", "--site", str(site_file), "--cert", str(relay_certificate),
                  "--dkim-dir", str(dkim_directory))  # fmt: skip
    output = result.check("oignons-mail dns").stdout
    return [line for line in output.splitlines() if line and not line.startswith(";")]


def unbound_zone(site_records: Sequence[str], extra_records: Sequence[tuple[str, str]] = ()) -> str:
    """The DNS of the test network, served by the relay's unbound on its two addresses.

    site_records (the site's MX, SPF, DKIM, DMARC, TLSA) come from `oignons-mail
    dns`; the harness adds the addresses and the outside world's records, and
    `extra_records`: more (host name, address) pairs, with their PTR records.
    """
    records = [
        *site_records,
        *(f"{name}. A {address}" for name, address in extra_records),
        f"{RELAY_HOSTNAME}. A {RELAY_ADDRESS}",
        f"{SMARTHOST_HOSTNAME}. A {SMARTHOST_ADDRESS}",
        f"{OUTSIDE_DOMAIN}. MX 10 {SINK_HOSTNAME}.",
        f"{SINK_HOSTNAME}. A {SINK_ADDRESS}",
        f"listed.{OUTSIDE_DOMAIN}. A {LISTED_CLIENT_ADDRESS}",
        f"clean.{OUTSIDE_DOMAIN}. A {CLEAN_CLIENT_ADDRESS}",
        f"orange.fr. MX 10 {SINK_HOSTNAME}.",
        f"{STRICT_DOMAIN}. MX 10 {SINK_HOSTNAME}.",
        f'{STRICT_DOMAIN}. TXT "v=spf1 ip4:{CLEAN_CLIENT_ADDRESS} -all"',
        f'_dmarc.{STRICT_DOMAIN}. TXT "v=DMARC1; p=reject"',
        # The blocklist lists the "listed" client, and 127.0.0.2 as every DNSBL does.
        f"{_reverse(LISTED_CLIENT_ADDRESS)}.{BLOCKLIST_ZONE}. A 127.0.0.2",
        f'{_reverse(LISTED_CLIENT_ADDRESS)}.{BLOCKLIST_ZONE}. TXT "listed for the oignons-mail e2e test"',
        f"2.0.0.127.{BLOCKLIST_ZONE}. A 127.0.0.2",
    ]
    pointers = [
        (RELAY_ADDRESS, RELAY_HOSTNAME),
        (RELAY_WORLD_ADDRESS, RELAY_HOSTNAME),
        (SMARTHOST_ADDRESS, SMARTHOST_HOSTNAME),
        (SINK_ADDRESS, SINK_HOSTNAME),
        (LISTED_CLIENT_ADDRESS, f"listed.{OUTSIDE_DOMAIN}"),
        (CLEAN_CLIENT_ADDRESS, f"clean.{OUTSIDE_DOMAIN}"),
        *((address, name) for name, address in extra_records),
    ]
    zones = [DOMAIN, OUTSIDE_DOMAIN, "orange.fr", BLOCKLIST_ZONE]
    lines = [
        "# oignons-mail e2e: the test network's DNS (test harness, not the package).",
        "server:",
        "    interface: 127.0.0.1",
        f"    interface: {RELAY_ADDRESS}",
        "    access-control: 10.237.0.0/16 allow",
        # Nothing outside the test network resolves: no query ever leaves it.
        '    local-zone: "." static',
        *(f'    local-zone: "{zone}." static' for zone in zones),
        *(f"    local-data: '{record}'" for record in records),
        # The sink's outside domain may be signed by a test (DANE): never answer it from here.
        '    local-zone: "signed.test." transparent',
        *(f'    local-data-ptr: "{address} {name}"' for address, name in pointers),
    ]
    return "\n".join(lines) + "\n"


def _reverse(address: str) -> str:
    return ".".join(reversed(address.split(".")))


# The outside sender that rspamd's test settings call spam by its score.
SCORED_SPAMMER = f"scored-spammer@{OUTSIDE_DOMAIN}"

RSPAMD_TEST_FILES = {
    # In the test network 10.237.0.0/16 plays the Internet: the package's own
    # override.d/options.inc keeps rspamd from treating it as local.
    # GTUBE's "add header" variant (tests/e2e/test_mail.py), never on a real
    # relay: it lets a sender choose rspamd's action (3.8+, and before 3.8).
    "local.d/options.inc": 'gtube_patterns = "all";\nenable_test_patterns = true;\n',
    # The test blocklist, checked for the connecting client's address.
    "local.d/rbl.conf": (
        "rbls {\n"
        "  oignons_e2e {\n"
        f'    symbol = "{BLOCKLIST_SYMBOL}";\n'
        f'    rbl = "{BLOCKLIST_ZONE}";\n'
        '    checks = ["from"];\n'
        "    ipv6 = false;\n"
        "    disable_monitoring = true;\n"
        "  }\n"
        "}\n"
    ),
    "local.d/rbl_group.conf": (
        f'symbols {{\n  "{BLOCKLIST_SYMBOL}" {{\n    weight = 1.0;\n'
        '    description = "Listed on the e2e test blocklist";\n  }\n}\n'
    ),
    # Mail from this sender gets rspamd's "add header" action by its score
    # (every threshold moved), the path where milter_headers writes the
    # verdict (tests/e2e/test_mail.py).
    "local.d/settings.conf": (
        "oignons_e2e_scored_spam {\n"
        "  priority = high;\n"
        f'  from = "{SCORED_SPAMMER}";\n'
        "  apply {\n"
        '    actions { reject = 1000.0; "rewrite subject" = 1000.0; greylist = 1000.0; "add header" = -1000.0; }\n'
        "  }\n"
        "}\n"
    ),
    # A short delay, so that the test can retry (Postfix retries after minutes).
    "override.d/greylist.conf": f"timeout = {GREYLIST_DELAY_SECONDS};\n",
}


def schleuder_api_key_settings(text: str, api_key: str) -> str:
    """schleuder.yml with one valid API key for schleuder-cli."""
    new, count = re.subn(r"(?m)^(\s*)valid_api_keys:.*$", rf"\1valid_api_keys:\n\1  - {api_key}", text)
    if count != 1:
        raise AssertionError("schleuder.yml has no `valid_api_keys:` line")
    return new


# --- Preparing the systems before they boot --------------------------------


def install_file(system: DebianSystem, source: Path | str, target: str, mode: int, group: str = "root") -> None:
    destination = system.root / target.lstrip("/")
    if isinstance(source, Path):
        system.copy_in(source, target)
    else:
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(source, encoding="utf-8")
    os.chmod(destination, mode)
    system.run(f"chgrp {group} {target}").check(f"chgrp {group} {target}")


def install_key_pair(system: DebianSystem, pair: KeyPair, certificate: str, key: str) -> None:
    install_file(system, pair.certificate, certificate, 0o644)
    install_file(system, pair.key, key, 0o640, group="ssl-cert")


def set_network_files(system: DebianSystem, hostname: str, address: str, nameserver: str) -> None:
    short = hostname.split(".", maxsplit=1)[0]
    (system.root / "etc/resolv.conf").write_text(f"nameserver {nameserver}\n")
    (system.root / "etc/hosts").write_text(f"127.0.0.1 localhost\n{address} {hostname} {short}\n")
    (system.root / "etc/mailname").write_text(f"{hostname}\n")


def install_package(system: DebianSystem, deb: Path, preseed: str = "") -> str:
    target = system.copy_in(deb, f"/root/{deb.name}")
    result = system.run(
        f"set -e\nprintf '%s\\n' {shlex.quote(preseed)} | debconf-set-selections\ndpkg -i {target}\n"
        if preseed
        else f"set -e\ndpkg -i {target}\n"
    )
    result.check(f"dpkg -i {deb.name} on {system.release}")
    return result.stdout + result.stderr


def prepare_relay(system: DebianSystem, artifacts: Artifacts, api_key: str) -> str:
    relay = artifacts.site.relay
    install_key_pair(system, artifacts.relay_key, relay.tls_cert_file, relay.tls_key_file)
    set_network_files(system, RELAY_HOSTNAME, RELAY_ADDRESS, "127.0.0.1")
    log = install_package(system, artifacts.relay_deb)
    records = site_dns_lines(artifacts.site_file, artifacts.relay_key.certificate, system.root / DKIM_DIRECTORY)
    zone = unbound_zone(records)
    add_relay_test_settings(system, api_key, zone)
    return log


def add_relay_test_settings(system: DebianSystem, api_key: str, zone: str) -> None:
    """The test network's DNS, rspamd's test blocklist, Schleuder's API key, the test alias."""
    install_file(system, zone, UNBOUND_TEST_CONF, 0o644)
    for name, text in RSPAMD_TEST_FILES.items():
        install_file(system, text, f"/etc/rspamd/{name}", 0o644)
    schleuder_yml = system.root / "etc/schleuder/schleuder.yml"
    schleuder_yml.write_text(schleuder_api_key_settings(schleuder_yml.read_text(), api_key))
    name, target = TEST_ALIAS
    with (system.root / "etc/aliases").open("a") as aliases:
        aliases.write(f"{name}: {target}\n")
    system.run("newaliases").check("newaliases on the relay")


def prepare_smarthost(system: DebianSystem, artifacts: Artifacts) -> str:
    smarthost = artifacts.site.smarthost
    install_key_pair(system, artifacts.node_key, smarthost.tls_cert_file, smarthost.tls_key_file)
    set_network_files(system, SMARTHOST_HOSTNAME, SMARTHOST_ADDRESS, RELAY_ADDRESS)
    preseed = f"oignons-mail-smarthost oignons-mail-smarthost/hostname string {SMARTHOST_NAME}"
    return install_package(system, artifacts.smarthost_deb, preseed)


# --- The sink ---------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One message the sink received (smtp_sink.py's JSON record)."""

    peer: str
    mail_from: str
    rcpt_to: list[str]
    data: str
    tls: str  # the TLS version of the session ("" in clear)


@dataclass
class Sink:
    """The SMTP sink in the world namespace, and the messages it received."""

    spool: Path
    key: KeyPair  # the certificate it offers with STARTTLS
    process: subprocess.Popen[bytes] | None = None

    def messages(self) -> list[Received]:
        found = []
        for path in sorted(self.spool.glob("*.json")):
            record = json.loads(path.read_text(encoding="utf-8"))
            found.append(
                Received(str(record["peer"]), str(record["mail_from"]), [str(r) for r in record["rcpt_to"]],
                         str(record["data"]), str(record.get("tls", "")))
            )  # fmt: skip
        return found

    def messages_to(self, recipient: str) -> list[Received]:
        return [m for m in self.messages() if recipient in m.rcpt_to]

    def wait_for(self, what: str, match: Callable[[Received], bool], timeout: float) -> Received:
        def probe() -> Received | None:
            return next((m for m in self.messages() if match(m)), None)

        return wait_until(f"the sink to receive {what}", probe, timeout)

    def stop(self) -> list[str]:
        return machines.stop_process(self.process)


def start_sink(namespace: str, spool: Path, log: Path) -> Sink:
    """The SMTP sink on SINK_ADDRESS, in that network namespace."""
    spool.mkdir(parents=True, exist_ok=True)
    # Its own key: the DANE cases publish it as TLSA (tests/e2e/test_deliverability.py).
    sink = Sink(spool, make_key_pair(spool.parent, SINK_HOSTNAME))
    with log.open("wb") as output:
        sink.process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, "/usr/bin/python3", str(Path(__file__).with_name("smtp_sink.py")),
             "--listen", SINK_ADDRESS, "--spool", str(spool), "--name", SINK_HOSTNAME,
             "--tls-cert", str(sink.key.certificate), "--tls-key", str(sink.key.key)],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=COMMAND_ENVIRONMENT,
            start_new_session=True,
        )  # fmt: skip
    process = sink.process

    def ready() -> bool | None:
        if process.poll() is not None:
            raise AssertionError(f"the SMTP sink exited: {log.read_text(errors='replace')}")
        return True if (spool / "ready").exists() else None

    wait_until("the SMTP sink", ready, 30)
    return sink


# --- The test bed -----------------------------------------------------------


@dataclass
class Testbed:
    """Two booted systems on the test network, and the harness's helpers for them."""

    artifacts: Artifacts
    network: TestNetwork
    relay: Container
    smarthost: Container
    sink: Sink
    run_directory: Path
    install_logs: dict[str, str]
    schleuder_error: str | None = None
    notes: list[str] = field(default_factory=list)

    __test__ = False

    @property
    def relay_unit(self) -> str:
        return MAIN_POSTFIX_UNIT[self.relay.release]

    @property
    def name(self) -> str:
        return f"relay {self.relay.release}, smarthost {self.smarthost.release}"

    def relay_exposure(self) -> float:
        """`systemd-analyze security`'s exposure of the relay's Postfix unit as it runs."""
        unit = self.relay_unit
        return _exposure(self.relay.check(f"systemd-analyze security --no-pager {unit}"), unit)

    def stock_relay_exposure(self) -> float:
        """The same, for Debian's unit alone: no drop-in of ours (offline, in a scratch root)."""
        unit = self.relay_unit
        template = "postfix@.service" if unit.startswith("postfix@") else unit
        output = self.relay.check(
            "set -e; root=$(mktemp -d); mkdir -p $root/etc/systemd/system;"
            f" cp /usr/lib/systemd/system/{template} $root/etc/systemd/system/;"
            f" systemd-analyze security --offline=true --root=$root --no-pager {unit}; rm -rf $root"
        )
        return _exposure(output, unit)

    def mail_log(self, container: Container) -> str:
        """Everything Postfix (and the responder) logged in the mail facility since boot."""
        return container.check("journalctl --no-pager -q -o short-iso --facility=mail", timeout=60)

    def world(self, argv: list[str], timeout: float = 90.0, input_text: str | None = None) -> Result:
        return self.network.execute(self.network.world, argv, timeout, input_text)

    def swaks(self, *arguments: str, source: str | None = None, port: int = 25, timeout: float = 90.0) -> Result:
        """swaks from the outside world to the relay's outside address."""
        argv = ["swaks", "--server", RELAY_WORLD_ADDRESS, "--port", str(port), "--timeout", "60",
                "--helo", "client.elsewhere.test", *arguments]  # fmt: skip
        if source is not None:
            argv += ["--local-interface", source]
        return self.world(argv, timeout)


def _exposure(output: str, unit: str) -> float:
    found = re.search(rf"Overall exposure level for {re.escape(unit)}: ([0-9.]+)", output)
    if found is None:
        raise AssertionError(f"no exposure level in systemd-analyze's output:\n{output[-2000:]}")
    return float(found.group(1))


def new_message_id(label: str) -> str:
    return f"{label}.{secrets.token_hex(6)}@e2e.{OUTSIDE_DOMAIN}"


# With the tool (the oignons-mail package) on both systems: its Python dependencies.
TOOL_PACKAGES = ("python3", "python3-debian", "python3-jinja2")


def install_tool(system: DebianSystem, artifacts: Artifacts) -> None:
    """The oignons-mail package built beside the two others (`oignons-mail fleet`, `status`)."""
    found = sorted((artifacts.work / "dist").glob("oignons-mail_*_all.deb"))
    if len(found) != 1:
        raise AssertionError(f"expected one oignons-mail package in {artifacts.work / 'dist'}, found {found}")
    install_package(system, found[0])


@contextmanager
def testbed(
    artifacts: Artifacts,
    relay_release: str,
    smarthost_release: str,
    with_tool: bool = False,  # noqa: PT028 - a context manager, not a test
) -> Iterator[Testbed]:
    """Two booted systems on the test network; everything is undone on exit, even after a failure.

    with_tool: both systems also get the tool's package (and its dependencies in their base systems).
    """
    extra = TOOL_PACKAGES if with_tool else ()
    run_directory = artifacts.work / f"run-relay-{relay_release}-smarthost-{smarthost_release}"
    if with_tool:
        run_directory = run_directory.with_name(run_directory.name + "-tool")
    if run_directory.exists():
        shutil.rmtree(run_directory)
    run_directory.mkdir(parents=True)
    cleanup: list[tuple[str, Callable[[], list[str]]]] = []
    try:
        relay_system = DebianSystem(base_tarball(relay_release, (*RELAY_PACKAGES, *extra)), relay_release)
        cleanup.append(("remove the relay's directory", lambda: _remove(relay_system)))
        smarthost_system = DebianSystem(
            base_tarball(smarthost_release, (*SMARTHOST_PACKAGES, *extra)), smarthost_release
        )
        cleanup.append(("remove the smarthost's directory", lambda: _remove(smarthost_system)))
        api_key = secrets.token_hex(32)
        install_logs = {
            "relay": prepare_relay(relay_system, artifacts, api_key),
            "smarthost": prepare_smarthost(smarthost_system, artifacts),
        }
        for system in (relay_system, smarthost_system):
            if with_tool:
                install_tool(system, artifacts)
            (system.root / "usr/sbin/policy-rc.d").unlink()  # the booted systems start their daemons

        network = TestNetwork.for_run(os.getpid())
        cleanup.append(("delete the network namespaces", network.destroy))
        network.create()
        relay = Container(relay_system, machines.machine_name("bulbe", os.getpid()), RELAY_HOSTNAME, network.relay,
                          run_directory / "relay-console.log")  # fmt: skip
        smarthost = Container(smarthost_system, machines.machine_name("marcuse", os.getpid()), SMARTHOST_HOSTNAME,
                              network.smarthost, run_directory / "smarthost-console.log")  # fmt: skip
        cleanup.append(("power the systems off", lambda: machines.stop_all([relay, smarthost])))
        cleanup.append(("save the relay's journal", lambda: _save_journal(relay, run_directory / "relay-journal.txt")))
        cleanup.append(
            ("save the smarthost's journal", lambda: _save_journal(smarthost, run_directory / "smarthost-journal.txt"))
        )
        machines.boot_all([relay, smarthost])

        sink = start_sink(network.world, run_directory / "sink", run_directory / "sink.log")
        cleanup.append(("stop the SMTP sink", sink.stop))
        bed = Testbed(artifacts, network, relay, smarthost, sink, run_directory, install_logs)
        wait_for_relay_services(bed)
        bed.schleuder_error = create_schleuder_list(relay)
        yield bed
    finally:
        machines.undo(cleanup, "the test bed")


def _remove(system: DebianSystem) -> list[str]:
    system.remove()
    return []


def _save_journal(container: Container, target: Path) -> list[str]:
    if container.process is None or container.process.poll() is not None:
        return []
    result = container.run("journalctl -b --no-pager -o short-iso", timeout=60)
    target.write_text(result.stdout + result.stderr, encoding="utf-8")
    return []


def wait_for_relay_services(bed: Testbed) -> None:
    relay = bed.relay
    units = [
        bed.relay_unit,
        "rspamd.service",
        "redis-server.service",
        "unbound.service",
        "schleuder-api-daemon.service",
    ]

    def active() -> bool | None:
        result = relay.run(f"systemctl is-active {' '.join(units)}")
        return True if result.returncode == 0 else None

    wait_until(
        f"{', '.join(units)} on the relay",
        active,
        90,
        diagnose=relay.run(f"systemctl status --no-pager {' '.join(units)}").stdout,
    )
    milter = bed.artifacts.site.relay.rspamd_milter_socket
    # rspamd creates it once its configuration is loaded: 40 to 60 s for
    # bookworm's rspamd 3.4 on a busy 2-core machine (seen here).
    wait_until(
        f"rspamd's milter socket {milter}",
        lambda: True if relay.run(f"test -S {milter}").returncode == 0 else None,
        RSPAMD_START_TIMEOUT,
    )
    wait_until(
        "the test DNS on the relay",
        lambda: (
            True
            if RELAY_ADDRESS in bed.smarthost.run(f"dig +short +time=2 +tries=1 A {RELAY_HOSTNAME}").stdout
            else None
        ),
        60,
    )


def create_schleuder_list(relay: Container) -> str | None:
    """Create machines@ with schleuder-cli, its admin at the sink; return why it failed, if it did."""
    script = f"""set -e
export GNUPGHOME=/root/e2e-gnupg
mkdir -p -m 0700 $GNUPGHOME
gpg --batch --quiet --passphrase '' --quick-generate-key '{LIST_ADMIN}' future-default default never
gpg --batch --armor --export '{LIST_ADMIN}' > /root/list-admin.asc
fingerprint=$(schleuder cert fingerprint | sed -n 's/.*: *//p' | tr -d ' ')
key=$(sed -n 's/^ *- \\([0-9a-f]\\{{64\\}}\\)$/\\1/p' /etc/schleuder/schleuder.yml | head -n1)
mkdir -p /root/.schleuder-cli
cat > /root/.schleuder-cli/schleuder-cli.yml <<EOF
host: localhost
port: 4443
tls_fingerprint: $fingerprint
api_key: $key
EOF
schleuder-cli lists new {LIST_ADDRESS} {LIST_ADMIN} /root/list-admin.asc
# schleuder-cli 0.1.0 cannot always tell the key's fingerprint from the file
# ("contains more than one key"): set it explicitly.
admin_key=$(gpg --with-colons --fingerprint '{LIST_ADMIN}' | awk -F: '/^fpr/ {{ print $10; exit }}')
schleuder-cli subscriptions set {LIST_ADDRESS} {LIST_ADMIN} fingerprint "$admin_key"
schleuder-cli subscriptions list {LIST_ADDRESS} | grep -F "$admin_key"
"""
    deadline = time.monotonic() + 60
    while True:
        result = relay.run(script, timeout=300)
        if result.returncode == 0 and LIST_ADMIN in result.stdout:
            return None
        # The API daemon may still be starting: retry a few times.
        if time.monotonic() > deadline:
            return (
                f"creating {LIST_ADDRESS} with schleuder-cli failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        relay.run("rm -rf /root/e2e-gnupg /root/list-admin.asc")
        time.sleep(3)
