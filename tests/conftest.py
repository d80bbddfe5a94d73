"""Shared fixtures: a real upstream server on loopback and a real `airlock run` process. What they
are built from lives in tests/support/."""

from __future__ import annotations

import signal
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .support import RULES, Airlock, Upstream, UpstreamCA, free_port, running


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
