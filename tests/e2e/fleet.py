"""The fleet test bed (tests/e2e/test_fleet.py): a signed repository, a relay, two nodes.

One LAN, a bridge in the `lan` namespace, every system on it:

    bulbe (relay, trixie)        10.237.0.1 and 10.237.1.1
    marcuse (node, bookworm)     10.237.0.2
    ekumen (node, trixie)        10.237.0.3
    lan: the SMTP sink           10.237.1.2 (mx.elsewhere.test)
         the web server          10.237.1.10:8080 (python3 -m http.server)

The web server serves the fleet repository (dist/repo as `make repo` makes it)
and, for each node's release, a "local mirror": the Debian packages Postfix
needs, downloaded when the node's base system was built (the nodes start with
exim4, as a standard Debian install, and have no route to Debian's mirror).

The packages are built three times from copies of the source tree: N (the
test site), N+1 (a pin for the relay's next key, the slow transport's rate,
one more user to root) and N+2 (the old pin dropped).

Those are the default site's names and releases (DEFAULT_FLEET_SITE); a
FleetSite names another site's relay and nodes, and build_published_site
publishes its first release with README.md's `make repo` line
(tests/e2e/test_other_site_fleet.py).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from oignons_mail import repo
from oignons_mail.build import not_copied, release_entry
from oignons_mail.site import load_site
from tests.e2e import machines
from tests.e2e.machines import (
    RUN_PREFIX,
    SINK_ADDRESS,
    Container,
    delete_namespaces,
    fresh_work_directory,
    run,
    wait_until,
)
from tests.e2e.testbed import (
    BUILD_TIMEOUT,
    DKIM_DIRECTORY,
    DOMAIN,
    MAIN_POSTFIX_UNIT,
    RELAY_HOSTNAME,
    RELAY_PACKAGES,
    REPOSITORY,
    SMARTHOST_HOSTNAME,
    TOOL,
    TOOL_ENVIRONMENT,
    KeyPair,
    Sink,
    add_relay_test_settings,
    create_schleuder_list,
    install_file,
    install_key_pair,
    make_key_pair,
    set_network_files,
    site_dns_lines,
    start_sink,
    unbound_zone,
    write_test_site,
)
from tests.system.debian_system import COMMAND_ENVIRONMENT, EXIM4_SYSTEM, DebianSystem, base_tarball

WORK = REPOSITORY / "build" / "e2e-fleet"
RELAY_RELEASE = "trixie"
RELAY_WORLD_ADDRESS = "10.237.1.1"
SERVER_ADDRESS = "10.237.1.10"
SERVER_PORT = 8080
PREFIX = 16
REPO_URI = f"http://{SERVER_ADDRESS}:{SERVER_PORT}/repo/"


@dataclass(frozen=True)
class FleetSite:
    """Which site the fleet runs: its domain, the relay's short name, the nodes booted (name, release).

    The relay gets 10.237.0.1, the nodes 10.237.0.2, .3, ... in this order.
    """

    domain: str
    relay: str
    nodes: tuple[tuple[str, str], ...]
    schleuder_list: bool = True
    # Lines the administrator adds to the relay's /etc/aliases (root's destination, when the site's own).
    relay_aliases: tuple[str, ...] = ()
    # The node's client certificate at the site's smarthost.tls_cert_file before the bootstrap
    # (the default site's is ssl-cert's snakeoil, made by the bootstrap itself).
    node_certificate: bool = False

    @property
    def relay_hostname(self) -> str:
        return f"{self.relay}.{self.domain}"

    @property
    def addresses(self) -> dict[str, str]:
        names = [self.relay, *(name for name, _ in self.nodes)]
        return {name: f"10.237.0.{index}" for index, name in enumerate(names, 1)}


# Each node presents its own certificate, pinned in relay.node_pins: the relay
# knows it by name (its heartbeats are recorded under that name).
DEFAULT_FLEET_SITE = FleetSite(DOMAIN, "bulbe", (("marcuse", "bookworm"), ("ekumen", "trixie")), node_certificate=True)

# The nodes: a standard Debian system with exim4, systemd to boot,
# unattended-upgrades; the Debian packages apt will want for
# oignons-mail-smarthost are downloaded into /root/fleet-mirror while the
# mirror is reachable (mmdebstrap's customize hook, before its cleanup).
NODE_PACKAGES = tuple(
    dict.fromkeys(
        ("systemd-sysv", "dbus", "iproute2", "procps", "openssl", "bind9-dnsutils", "unattended-upgrades",
         *EXIM4_SYSTEM)
    )
)  # fmt: skip
MIRROR_IN_BASE = "/root/fleet-mirror"
NODE_CUSTOMIZE = (
    'chroot "$1" sh -c \'apt-get install --download-only -y postfix ssl-cert python3-debian python3-jinja2'
    f" && mkdir -p {MIRROR_IN_BASE} && mv /var/cache/apt/archives/*.deb {MIRROR_IN_BASE}/'",
)
FLEET_RELAY_PACKAGES = (*RELAY_PACKAGES, "unattended-upgrades", "python3-debian", "python3-jinja2")

# What the test releases change in the site (N+1); N+2 drops the old pin.
SLOW_RATE = ("2s", "3s")
NEW_USER_TO_ROOT = "oignons-fleet"
# And the DKIM selector (docs/dns.md's key rotation): the relay's conffile
# /etc/rspamd/local.d/dkim_signing.conf changes, through unattended-upgrade.
DKIM_SELECTOR = ("bulbe1", "bulbe2")
DKIM_SIGNING_CONFFILE = "/etc/rspamd/local.d/dkim_signing.conf"
# The package's aliases table, and the administrator's own (never shipped).
SMARTHOST_ALIASES = "/etc/postfix/oignons-mail/aliases"
LOCAL_ALIASES = "/etc/postfix/oignons-mail/aliases.local"


def fleet_base(role: str, release: str) -> Path:
    if role == "relay":
        return base_tarball(release, FLEET_RELAY_PACKAGES)
    return base_tarball(release, NODE_PACKAGES, NODE_CUSTOMIZE)


# --- Releases ----------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    version: str
    debs: tuple[Path, ...]
    pins: tuple[str, ...]


def add_changelog_entry(source: Path, version: str, text: str) -> None:
    """A release as an administrator makes one: `oignons-mail release` in the source tree."""
    changelog = source / "debian" / "changelog"
    site = source / "sites" / "nos-oignons.toml"
    run(
        [*TOOL, "release", version, "--message", text, "--changelog", str(changelog), "--site", str(site)],
        environment=TOOL_ENVIRONMENT,
    ).check(f"oignons-mail release {version}")


def site_text(base: str, pins: tuple[str, ...], changed: bool) -> str:
    """The test site with these relay pins; `changed`: N+1's rate and user to root."""
    text, count = re.subn(r'(?m)^relay_pins = \["[^"]*"\]$', f"relay_pins = {_toml_list(pins)}", base)
    assert count == 1, "the test site has no one-pin `relay_pins` line"
    if changed:
        old, new = SLOW_RATE
        assert text.count(f'destination_rate_delay = "{old}"') == 1, "the slow transport's rate changed in the site"
        text = text.replace(f'destination_rate_delay = "{old}"', f'destination_rate_delay = "{new}"')
        assert text.count('"debian-tor", "postfix",') == 1, "users_to_root changed in the site"
        text = text.replace('"debian-tor", "postfix",', f'"debian-tor", "postfix", "{NEW_USER_TO_ROOT}",')
        old_selector, new_selector = DKIM_SELECTOR
        assert text.count(f'selector = "{old_selector}"') == 1, "the DKIM selector changed in the site"
        text = text.replace(f'selector = "{old_selector}"', f'selector = "{new_selector}"')
    return text


def _toml_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def build_release(work: Path, name: str, site: str, version: str | None, text: str) -> Path:
    """Build the packages of one release from a copy of the source tree; the dist directory."""
    source = work / f"src-{name}"
    if source.exists():
        shutil.rmtree(source)
    shutil.copytree(REPOSITORY, source, ignore=not_copied(REPOSITORY))
    if version is not None:
        add_changelog_entry(source, version, text)
    site_file = work / f"site-{name}.toml"
    site_file.write_text(site, encoding="utf-8")
    run([*TOOL, "validate", str(site_file)], environment=TOOL_ENVIRONMENT).check(f"validate {site_file}")
    dist = work / f"dist-{name}"
    run(
        [*TOOL, "build", "--site", str(site_file), "--source", str(source), "--work", str(work / f"pkg-{name}"),
         "--dist", str(dist)],
        timeout=BUILD_TIMEOUT,
        environment={**TOOL_ENVIRONMENT, "DEB_BUILD_OPTIONS": "nocheck"},
    ).check(f"oignons-mail build of release {name}")  # fmt: skip
    return dist


@dataclass(frozen=True)
class FleetArtifacts:
    work: Path
    relay_old: KeyPair
    relay_new: KeyPair
    node_keys: dict[str, KeyPair]  # the nodes pinned in relay.node_pins, by name
    releases: tuple[Release, ...]  # N, N+1, N+2 (the default site's)
    gnupg_home: Path
    archive: repo.Archive
    date: str
    site: FleetSite = DEFAULT_FLEET_SITE

    def publish(self, release: Release, repository: Path) -> None:
        repo.publish(list(release.debs), repository, archive=self.archive, version=release.version,
                     date=self.date, home=self.gnupg_home)  # fmt: skip


def build_fleet_artifacts(work: Path = WORK) -> FleetArtifacts:
    keys = fresh_work_directory(work) / "keys"
    keys.mkdir()
    relay_old = make_key_pair(keys, RELAY_HOSTNAME)
    (keys / "next").mkdir()
    relay_new = make_key_pair(keys / "next", RELAY_HOSTNAME)
    node_keys = {name: make_key_pair(keys, f"{name}.{DOMAIN}") for name, _ in DEFAULT_FLEET_SITE.nodes}
    digest = load_site(REPOSITORY / "sites" / "nos-oignons.toml").smarthost.fingerprint_digest
    old_pin, new_pin = relay_old.pins[digest], relay_new.pins[digest]
    node_pins = {name: key.pins["sha256"] for name, key in node_keys.items()}
    base = write_test_site(old_pin, node_pins, work / "site-base.toml").read_text(encoding="utf-8")
    entry = release_entry(REPOSITORY)
    n = entry.version
    plan = [
        ("N", n, (old_pin,), False, None),
        ("N+1", f"{n}+fleet1", (old_pin, new_pin), True, "Pin the relay's next key; slow transport rate 3s."),
        ("N+2", f"{n}+fleet2", (new_pin,), True, "Drop the relay's old key's pin."),
    ]
    releases = []
    for name, version, pins, changed, text in plan:
        dist = build_release(work, name, site_text(base, pins, changed), version if text else None, text or "")
        debs = tuple(sorted(dist.glob("*_all.deb")))
        assert debs, f"release {name} built no .deb in {dist}"
        releases.append(Release(version, debs, pins))
    archive = repo.Archive(REPO_URI, DOMAIN, entry.maintainer)
    return FleetArtifacts(work, relay_old, relay_new, node_keys, (releases[0], releases[1], releases[2]),
                          work / "gnupg", archive, entry.date)  # fmt: skip


# --- Another site, published as README.md's quick start says ------------------

README = REPOSITORY / "README.md"
# The repository's address in README.md's commands; the test network's instead.
README_REPO_URI = "https://apt.example.org/mail/"


def readme_commands(step: str) -> list[str]:
    """The commands of one step of README.md's quick start ("8.", "9."), in order."""
    text = README.read_text(encoding="utf-8")
    start = text.find(f"**{step} ")
    assert start >= 0, f"README.md has no quick start step {step}"
    end = text.find("\n**", start + 1)
    block = text[start : end if end >= 0 else len(text)]
    return [line.strip() for line in block.splitlines() if line.startswith("    ") and line.strip()]


def build_published_site(site: FleetSite, fixture: Path, work: Path) -> FleetArtifacts:
    """The site's first release, published with README's `make repo` in a copy of the tree, its own signing home.

    The site file is the fixture with the test keys' pins: the relay's, and
    the first node's in `relay.node_pins`.  The repository is copied to the
    web server's directory, as README's rsync does.
    """
    keys = fresh_work_directory(work) / "keys"
    keys.mkdir()
    relay_key = make_key_pair(keys, site.relay_hostname)
    first_node = site.nodes[0][0]
    node_key = make_key_pair(keys, f"{first_node}.{site.domain}")
    text = fixture.read_text(encoding="utf-8")
    digest = load_site(fixture).smarthost.fingerprint_digest
    text, relay_count = re.subn(r"(?ms)^relay_pins = \[.*?\]$", f'relay_pins = ["{relay_key.pins[digest]}"]', text)
    text, node_count = re.subn(
        r"(?m)^node_pins = \{.*\}$", f'node_pins = {{ {first_node} = "{node_key.pins["sha256"]}" }}', text
    )
    assert (relay_count, node_count) == (1, 1), f"{fixture}: no one `relay_pins = [...]` and `node_pins = {{...}}`"
    source = work / "src-N"
    shutil.copytree(REPOSITORY, source, ignore=not_copied(REPOSITORY))
    site_file = work / "site-N.toml"
    site_file.write_text(text, encoding="utf-8")
    version = "0.1.0"
    run([*TOOL, "release", version, "--site", str(site_file), "--message", f"First release for {site.domain}."],
        environment=TOOL_ENVIRONMENT).check("oignons-mail release")  # fmt: skip
    (command,) = [c for c in readme_commands("8.") if c.startswith("make repo ")]
    argv = command.replace(README_REPO_URI, REPO_URI).split()
    argv = [f"SITE={site_file}" if a.startswith("SITE=") else a for a in argv]
    assert f"REPO_URI={REPO_URI}" in argv, f"README's `make repo` line changed: {command}"
    environment = {**TOOL_ENVIRONMENT, "OIGNONS_MAIL_GNUPGHOME": str(work / "gnupg"), "DEB_BUILD_OPTIONS": "nocheck"}
    made = run(["make", "-C", str(source), *argv[1:]], timeout=BUILD_TIMEOUT, environment=environment)
    made.check(f"{command} (in {source})")
    shutil.copytree(source / "dist" / "repo", work / "www" / "repo")
    debs = tuple(sorted((source / "dist").glob("*_all.deb")))
    entry = release_entry(REPOSITORY)
    archive = repo.Archive(REPO_URI, site.domain, load_site(site_file).package.maintainer)
    return FleetArtifacts(work, relay_key, relay_key, {first_node: node_key},
                          (Release(version, debs, (relay_key.pins[digest],)),),
                          work / "gnupg", archive, entry.date, site)  # fmt: skip


# --- The network ---------------------------------------------------------------


@dataclass(frozen=True)
class FleetNetwork:
    """The `lan` namespace (bridge, sink, web server) and one namespace per system."""

    prefix: str
    site: FleetSite = DEFAULT_FLEET_SITE

    @classmethod
    def for_run(cls, pid: int, site: FleetSite = DEFAULT_FLEET_SITE) -> FleetNetwork:
        return cls(f"{RUN_PREFIX}{pid}-f", site)

    def namespace(self, role: str) -> str:
        return f"{self.prefix}{role}"

    @property
    def lan(self) -> str:
        return self.namespace("lan")

    @property
    def namespaces(self) -> list[str]:
        return [self.lan, *(self.namespace(name) for name in self.site.addresses)]

    def create(self) -> None:
        for namespace in self.namespaces:
            run(["ip", "netns", "add", namespace]).check(f"ip netns add {namespace}")
            self.ip(namespace, "link", "set", "lo", "up")
        self.ip(self.lan, "link", "add", "br0", "type", "bridge")
        self.ip(self.lan, "link", "set", "br0", "up")
        for name, address in self.site.addresses.items():
            namespace = self.namespace(name)
            run(["ip", "link", "add", "eth0", "netns", namespace, "type", "veth", "peer", "name", f"v-{name}",
                 "netns", self.lan]).check(f"veth {name}")  # fmt: skip
            self.ip(self.lan, "link", "set", f"v-{name}", "master", "br0", "up")
            self.ip(namespace, "address", "add", f"{address}/{PREFIX}", "dev", "eth0")
            self.ip(namespace, "link", "set", "eth0", "up")
        relay = self.namespace(self.site.relay)
        self.ip(relay, "address", "add", f"{RELAY_WORLD_ADDRESS}/{PREFIX}", "dev", "eth0")
        for address in (SINK_ADDRESS, SERVER_ADDRESS):
            self.ip(self.lan, "address", "add", f"{address}/{PREFIX}", "dev", "br0")

    def ip(self, namespace: str, *arguments: str) -> None:
        run(["ip", "-n", namespace, *arguments]).check(f"ip -n {namespace} {' '.join(arguments)}")

    def destroy(self) -> list[str]:
        return delete_namespaces(self.namespaces)


# --- The web server --------------------------------------------------------------


def write_local_mirror(system: DebianSystem, target: Path) -> None:
    """The Debian packages downloaded into the node's base, as a flat repository."""
    target.mkdir(parents=True)
    for deb in (system.root / MIRROR_IN_BASE.lstrip("/")).glob("*.deb"):
        shutil.copyfile(deb, target / deb.name)
    packages = run(["sh", "-c", f"cd {target} && apt-ftparchive packages ."]).check("apt-ftparchive packages")
    (target / "Packages").write_text(packages.stdout, encoding="utf-8")
    # No Origin: the nodes' unattended-upgrades never takes anything from it.
    release = run(["sh", "-c", f"cd {target} && apt-ftparchive release ."]).check("apt-ftparchive release")
    (target / "Release").write_text(release.stdout, encoding="utf-8")


def local_mirror_sources(release: str) -> str:
    return (
        "# The test network's stand-in for Debian's mirror (fleet e2e test).\n"
        f"Types: deb\nURIs: http://{SERVER_ADDRESS}:{SERVER_PORT}/mirror-{release}/\nSuites: ./\nTrusted: yes\n"
    )


@dataclass
class WebServer:
    root: Path
    process: subprocess.Popen[bytes] | None = None

    def stop(self) -> list[str]:
        return machines.stop_process(self.process)


def start_web_server(network: FleetNetwork, root: Path, log: Path) -> WebServer:
    server = WebServer(root)
    with log.open("wb") as output:
        server.process = subprocess.Popen(
            ["ip", "netns", "exec", network.lan, "/usr/bin/python3", "-m", "http.server", "--bind", SERVER_ADDRESS,
             "--directory", str(root), str(SERVER_PORT)],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=COMMAND_ENVIRONMENT,
            start_new_session=True,
        )  # fmt: skip
    process = server.process

    def ready() -> bool | None:
        if process.poll() is not None:
            raise AssertionError(f"http.server exited: {log.read_text(errors='replace')}")
        fetch = f"import urllib.request; urllib.request.urlopen('{REPO_URI}dists/stable/InRelease', timeout=2)"
        probe = run(["ip", "netns", "exec", network.lan, "/usr/bin/python3", "-c", fetch])
        return True if probe.returncode == 0 else None

    wait_until("the repository's web server", ready, 30)
    return server


# --- The systems -------------------------------------------------------------------


def remove_debian_sources(system: DebianSystem) -> None:
    """No route to Debian's mirror: apt must not be told about it."""
    (system.root / "etc/apt/sources.list").unlink(missing_ok=True)
    for path in (system.root / "etc/apt/sources.list.d").glob("*"):
        path.unlink()


def prepare_fleet_relay(system: DebianSystem, artifacts: FleetArtifacts, api_key: str) -> None:
    site = load_site(artifacts.work / "site-N.toml")
    fleet_site = artifacts.site
    addresses = fleet_site.addresses
    install_key_pair(system, artifacts.relay_old, site.relay.tls_cert_file, site.relay.tls_key_file)
    set_network_files(system, fleet_site.relay_hostname, addresses[fleet_site.relay], "127.0.0.1")
    remove_debian_sources(system)
    # The relay is installed from the repository's files before it boots, as
    # the other e2e tests do; the nodes bootstrap over the network.
    keyring = next(d for d in (artifacts.work / "www/repo").glob("*-archive-keyring.deb"))
    # With the tool (`oignons-mail fleet`), as the relay's Recommends bring it.
    debs = [
        keyring,
        *(d for d in artifacts.releases[0].debs if d.name.startswith(("oignons-mail-relay_", "oignons-mail_"))),
    ]
    for deb in debs:
        system.copy_in(deb, f"/root/{deb.name}")
    installed = " ".join(f"/root/{deb.name}" for deb in debs)
    system.run(f"set -e\ndpkg -i {installed}").check("dpkg -i on the fleet relay")
    # unbound_zone() has bulbe and marcuse (the other e2e tests' relay and node) already.
    hosts = [(f"{name}.{fleet_site.domain}", address) for name, address in addresses.items()]
    others = [(host, address) for host, address in hosts if host not in (RELAY_HOSTNAME, SMARTHOST_HOSTNAME)]
    if fleet_site.relay_aliases:
        with (system.root / "etc/aliases").open("a", encoding="utf-8") as aliases:
            aliases.writelines(f"{line}\n" for line in fleet_site.relay_aliases)
    records = site_dns_lines(
        artifacts.work / "site-N.toml", artifacts.relay_old.certificate, system.root / DKIM_DIRECTORY
    )
    add_relay_test_settings(system, api_key, unbound_zone(records, others))


def prepare_node(system: DebianSystem, name: str, artifacts: FleetArtifacts) -> None:
    # No TLS key of its own yet: ssl-cert, installed with the package, makes
    # the snakeoil pair the node presents (the relay accepts the list's mail
    # without a client certificate).
    fleet_site = artifacts.site
    addresses = fleet_site.addresses
    set_network_files(system, f"{name}.{fleet_site.domain}", addresses[name], addresses[fleet_site.relay])
    remove_debian_sources(system)
    node_key = artifacts.node_keys.get(name)
    if fleet_site.node_certificate and node_key is not None:
        smarthost = load_site(artifacts.work / "site-N.toml").smarthost
        # No ssl-cert group before the bootstrap: Postfix reads the key as root.
        install_file(system, node_key.certificate, smarthost.tls_cert_file, 0o644)
        install_file(system, node_key.key, smarthost.tls_key_file, 0o600)
    install_file(system, local_mirror_sources(system.release), "/etc/apt/sources.list.d/local-mirror.sources", 0o644)


@dataclass
class Fleet:
    artifacts: FleetArtifacts
    network: FleetNetwork
    relay: Container
    nodes: dict[str, Container]
    sink: Sink
    server: WebServer
    run_directory: Path
    schleuder_error: str | None = None
    snapshots: dict[str, str] = field(default_factory=dict)

    @property
    def repository(self) -> Path:
        return self.server.root / "repo"

    @property
    def relay_unit(self) -> str:
        return MAIN_POSTFIX_UNIT[self.relay.release]

    def systems(self) -> list[Container]:
        return [self.relay, *self.nodes.values()]

    def mail_log(self, container: Container) -> str:
        return container.check("journalctl --no-pager -q -o short-iso --facility=mail", timeout=60)


@contextmanager
def fleet(artifacts: FleetArtifacts) -> Iterator[Fleet]:
    """The booted relay and nodes, the web server, the sink; all undone on exit."""
    run_directory = artifacts.work / "run"
    run_directory.mkdir(parents=True, exist_ok=True)
    cleanup: list[tuple[str, Callable[[], list[str]]]] = []
    pid = os.getpid()
    fleet_site = artifacts.site
    try:
        www = artifacts.work / "www"
        if not (www / "repo" / "dists").exists():  # not published yet (by `make repo`)
            artifacts.publish(artifacts.releases[0], www / "repo")
        systems: dict[str, DebianSystem] = {}
        relay_system = DebianSystem(fleet_base("relay", RELAY_RELEASE), RELAY_RELEASE)
        cleanup.append(("remove the relay's directory", lambda: _remove(relay_system)))
        for name, release in fleet_site.nodes:
            system = DebianSystem(fleet_base("node", release), release)
            systems[name] = system
            cleanup.append((f"remove {name}'s directory", lambda s=system: _remove(s)))  # type: ignore[misc]
        prepare_fleet_relay(relay_system, artifacts, hashlib.sha256(os.urandom(16)).hexdigest())
        for name, system in systems.items():
            prepare_node(system, name, artifacts)
            if not (www / f"mirror-{system.release}").exists():
                write_local_mirror(system, www / f"mirror-{system.release}")
        for system in (relay_system, *systems.values()):
            (system.root / "usr/sbin/policy-rc.d").unlink()

        network = FleetNetwork.for_run(pid, fleet_site)
        cleanup.append(("delete the network namespaces", network.destroy))
        network.create()
        relay = Container(relay_system, machines.machine_name(f"fleet{fleet_site.relay}", pid),
                          fleet_site.relay_hostname, network.namespace(fleet_site.relay),
                          run_directory / f"{fleet_site.relay}-console.log")  # fmt: skip
        nodes = {
            name: Container(
                system,
                machines.machine_name(f"fleet{name}", pid),
                f"{name}.{fleet_site.domain}",
                network.namespace(name),
                run_directory / f"{name}-console.log",
            )
            for name, system in systems.items()
        }
        containers = [relay, *nodes.values()]
        cleanup.append(("power the systems off", lambda: machines.stop_all(containers)))
        for container in containers:
            cleanup.append((f"save {container.machine}'s journal",
                            lambda c=container: _save_journal(c, run_directory)))  # type: ignore[misc]  # fmt: skip
        server = start_web_server(network, www, run_directory / "http.log")
        cleanup.append(("stop the web server", server.stop))
        sink = start_sink(network.lan, run_directory / "sink", run_directory / "sink.log")
        cleanup.append(("stop the SMTP sink", sink.stop))
        machines.boot_all(containers)
        result = Fleet(artifacts, network, relay, nodes, sink, server, run_directory)
        _wait_for_relay(result)
        if fleet_site.schleuder_list:
            result.schleuder_error = create_schleuder_list(relay)
        yield result
    finally:
        machines.undo(cleanup, "the fleet")


def _wait_for_relay(bed: Fleet) -> None:
    units = f"{bed.relay_unit} rspamd.service unbound.service schleuder-api-daemon.service"

    def active() -> bool | None:
        return True if bed.relay.run(f"systemctl is-active {units}").returncode == 0 else None

    wait_until(f"{units} on the relay", active, 90)
    site = bed.artifacts.site
    for node in bed.nodes.values():

        def resolves(node: Container = node) -> bool | None:
            answer = node.run(f"dig +short +time=2 +tries=1 A {site.relay_hostname}").stdout
            return True if site.addresses[site.relay] in answer else None

        wait_until(f"the test DNS from {node.machine}", resolves, 60)


def _remove(system: DebianSystem) -> list[str]:
    system.remove()
    return []


def _save_journal(container: Container, run_directory: Path) -> list[str]:
    if container.process is None or container.process.poll() is not None:
        return []
    result = container.run("journalctl -b --no-pager -o short-iso", timeout=60)
    (run_directory / f"{container.hostname}-journal.txt").write_text(result.stdout + result.stderr, encoding="utf-8")
    return []
