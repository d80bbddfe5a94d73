"""Shared fixtures: a real upstream server on loopback and a real `airlock run` process. What they
are built from lives in tests/support/."""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import signal
import ssl
import tempfile
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from .support import RULES, Airlock, Upstream, UpstreamCA, free_port, running
from .support.capture import UPSTREAM_IP
from .support.mcp_http import NotesServer, NotesServers
from .support.mcp_stdio import Host, Setup
from .support.namespaces import NETNS_ETC, Netns, Processes, add_link, quiet, sh


@pytest.fixture(scope="session")
def upstream_ca(tmp_path_factory: pytest.TempPathFactory) -> UpstreamCA:
    """A private CA and a server certificate for 127.0.0.1 and localhost."""
    return UpstreamCA.create(tmp_path_factory.mktemp("upstream-ca"))


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """A plain HTTP upstream on loopback."""
    with running(Upstream(free_port(), "http")) as up:
        yield up


@pytest.fixture
def tls_upstream(upstream_ca: UpstreamCA) -> Iterator[Upstream]:
    """An HTTPS upstream on loopback with a certificate from `upstream_ca`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(upstream_ca.server_cert, upstream_ca.server_key)
    with running(Upstream(free_port(), "https"), ctx) as up:
        yield up


@pytest.fixture
def make_airlock(tmp_path: Path) -> Iterator[Callable[..., Airlock]]:
    """A factory for `airlock run` processes on free ports; every one is stopped afterwards."""
    started: list[Airlock] = []

    def make(
        rules: str = RULES,
        upstreams: dict[str, tuple[str, int]] | None = None,
        extra: tuple[str, ...] = (),
        data: Path | None = None,
        start: bool = True,
    ) -> Airlock:
        rules_file = tmp_path / f"rules-{len(started)}.yaml"
        rules_file.write_text(rules)
        a = Airlock(
            data=data or tmp_path / "data",
            rules=rules_file,
            port=free_port(),
            control_port=free_port(),
            upstreams=upstreams or {},
            extra=extra,
            output=tmp_path / f"airlock-{len(started)}.out",
        )
        started.append(a)
        return a.start() if start else a

    yield make
    for a in started:
        a.stop(signal.SIGKILL)


@pytest.fixture
def airlock(make_airlock: Callable[..., Airlock]) -> Airlock:
    """One running proxy with the test rules."""
    return make_airlock()


# ---- running in parallel (`make test` runs `pytest -n logical --dist loadfile`) ---------------

# Modules whose names, imported into a test module, say it changes the host's network set-up.
HOST_NETWORK_SUPPORT = frozenset({"tests.support.namespaces", "tests.support.capture"})
HOST_NETWORK_FIXTURES = frozenset({"netns", "processes"})


def changes_host_network(item: pytest.Item) -> bool:
    """Whether a test makes network namespaces, links or iptables rules, or writes /etc/netns:
    it uses the fixtures that do, or its module imports what does."""
    if HOST_NETWORK_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    module = getattr(item, "module", None)
    return module is not None and any(
        getattr(value, "__module__", None) in HOST_NETWORK_SUPPORT for value in vars(module).values()
    )


# Held by the module that changes the host's network set-up while it runs, whichever worker
# runs it: such modules run one after another.
HOST_NETWORK_LOCK = Path(tempfile.gettempdir()) / "airlock-tests-host-network.lock"


@pytest.fixture(scope="module", autouse=True)
def _host_network_alone(request: pytest.FixtureRequest) -> Iterator[None]:
    """Under pytest-xdist (`--dist loadfile`) a module's tests run on one worker, in order, as
    they do without it: its module-scoped fixtures (servers, a proxy, emulators) start once.
    Modules that change the host's network set-up run one at a time: each compares what the host
    holds before and after it (namespaces, links, iptables rules), so another's, running at the
    same time, would look like its leftovers. Modules share nothing else: each test has its own
    ports, data and temp dirs."""
    module = request.module
    items = [i for i in request.session.items if getattr(i, "module", None) is module]
    if not any(changes_host_network(i) for i in items):
        yield
        return
    with HOST_NETWORK_LOCK.open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests say which proxy each client uses; nothing leaks in from the environment.
    for var in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "AIRLOCK_DATA",
    ):
        monkeypatch.delenv(var, raising=False)


# ---- MCP (the notes server over HTTP and stdio, and `airlock mcp` driven by hand) ------------


@pytest.fixture(scope="module")
def notes_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], NotesServer]]:
    """A factory for the notes MCP server in a transport mode: one process per mode for the module,
    each test working on notes of its own names."""
    with NotesServers(tmp_path_factory.mktemp("mcp-server")) as servers:
        yield servers.get


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    """One test's files for `airlock mcp` in front of the notes server on stdio."""
    return Setup(tmp_path)


@pytest.fixture
def hosts() -> Iterator[Callable[..., Host]]:
    """A factory for `airlock mcp` processes driven by hand; every one is stopped afterwards."""
    started: list[Host] = []

    def start(cmd: list[str], stderr: Path) -> Host:
        h = Host(cmd, stderr)
        started.append(h)
        return h

    yield start
    for h in started:
        h.stop()


# ---- namespaces (the capture, isolation and egress-path tests) ------------------------------


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Every process a test starts is killed when it ends."""
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


@pytest.fixture
def netns(processes: Processes) -> Iterator[Netns]:
    """A namespace with loopback up and 10.77.0.1/24 on a link; its hosts file names allowed.test
    and forgotten.test there and its resolv.conf says nameserver 10.77.0.1."""
    ns = Netns(f"al-t-{secrets.token_hex(4)}")
    etc = NETNS_ETC / ns.name
    sh("ip", "netns", "add", ns.name)
    try:
        etc.mkdir(parents=True)
        (etc / "hosts").write_text(
            f"127.0.0.1 localhost\n::1 localhost\n{UPSTREAM_IP} allowed.test forgotten.test\n"
        )
        (etc / "resolv.conf").write_text(f"nameserver {UPSTREAM_IP}\n")
        sh(*ns.exec("ip", "link", "set", "lo", "up"))
        add_link(ns.exec(), "up0", f"{UPSTREAM_IP}/24")
        yield ns
    finally:
        processes.stop()
        for pid in quiet("ip", "netns", "pids", ns.name).split():
            with suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        quiet("ip", "netns", "del", ns.name)
        shutil.rmtree(etc, ignore_errors=True)
