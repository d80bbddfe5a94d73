"""What `airlock run` is told on its command line, parsed and checked."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from proxy.core.records import BodyPolicy
from rules import default_path

from . import times

DEFAULT_DATA = "./airlock-data"


class ConfigError(ValueError):
    """A command-line value is malformed; the message names it and shows the expected form."""


@dataclass(frozen=True)
class Address:
    """A host and port to listen on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Upstream:
    """A named upstream served in reverse mode on a local port. A path in its URL is a base
    path: the listener's `/` is the URL itself and `/x` is `URL/x`."""

    name: str
    url: str
    port: int

    @property
    def origin(self) -> str:
        """The URL's scheme, host and port: where connections go."""
        url = urlsplit(self.url)
        return f"{url.scheme}://{url.netloc}"

    @property
    def base(self) -> str:
        """The URL's path ('' for none or `/`): put in front of every path asked of the listener."""
        path = urlsplit(self.url).path
        return "" if path in ("", "/") else path


STREAM_ABOVE = 8 << 20  # request body bytes read whole by default (`run --stream-above`)
TRANSPARENT = Address("127.0.0.1", 8082)  # where `exec --isolate` looks for the transparent listener


@dataclass(frozen=True)
class RunConfig:
    """Everything the proxy process needs to start."""

    data: Path
    listen: Address = Address("127.0.0.1", 8080)
    control: Address = Address("127.0.0.1", 8081)
    rules: Path = field(default_factory=default_path)
    upstreams: tuple[Upstream, ...] = ()
    agent: str = "anonymous"  # who sends a request that carries no credentials
    agent_uids: dict[int, str] = field(default_factory=dict)  # --agent-uid: a captured UID's agent
    body_limit: BodyPolicy = field(default_factory=BodyPolicy)  # request body bytes kept, by effect
    stream_above: int = STREAM_ABOVE  # request bodies past this many bytes stream upstream unread
    log_max_size: int = 64 << 30
    upstream_ca: Path | None = None
    rules_poll: float = 1.0  # seconds between checks of the rule files; 0 turns the watcher off
    transparent: Address | None = None  # listener for connections redirected by iptables
    ca: Path | None = None  # a CA (key and certificate PEM) to install instead of minting one
    control_token: Path | None = None  # a file holding the control token
    reads_when_log_down: str = "refuse"  # "pass": reads go out unlogged while the log cannot be written
    checkpoint_every: int = 1000  # entries between signed checkpoints (0: by time only)
    checkpoint_interval: float = 300.0  # seconds between checkpoints, if anything was written (0: off)
    checkpoint_to: str | None = None  # a URL or file each checkpoint is sent to once durable
    otlp_endpoint: str | None = None  # an OTLP/HTTP logs endpoint the log is shipped to
    retain: float | None = None  # seconds of closed actions kept (--retain), None: all
    retain_size: int | None = None  # bytes of pages the log is pruned to stay under (--retain-size)
    archive: Path | None = None  # where pruned entries are written first (--archive)


def default_data() -> str:
    """The data dir when --data is not given: $AIRLOCK_DATA, else ./airlock-data."""
    return os.environ.get("AIRLOCK_DATA") or DEFAULT_DATA


def parse_address(text: str) -> Address:
    """HOST:PORT (or [V6]:PORT, or :PORT for all interfaces' default of 127.0.0.1)."""
    m = re.fullmatch(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})", text)
    if not m or int(m["port"]) > 65535:
        raise ConfigError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    host = m["v6"] or m["host"] or "127.0.0.1"
    return Address(host, int(m["port"]))


def parse_upstream(text: str) -> Upstream:
    """NAME=URL@PORT, e.g. tools=http://127.0.0.1:9000/mcp@9001: a URL of scheme, host, port
    and a base path."""
    m = re.fullmatch(r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)=(?P<url>.+)@(?P<port>\d{1,5})", text)
    if not m or not 0 < int(m["port"]) < 65536:
        raise ConfigError(f"{text!r} is not NAME=URL@PORT (e.g. tools=http://127.0.0.1:9000@9001)")
    url, port = m["url"], int(m["port"])
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{url!r} in {text!r} is not an http:// or https:// URL")
    if "@" in parts.netloc:
        raise ConfigError(
            f"{url!r} in {text!r} carries credentials: give the URL without them (the agent's "
            "requests carry their own)"
        )
    where = _NETLOC.fullmatch(parts.netloc)
    if not where:
        raise ConfigError(f"{url!r} in {text!r}: {parts.netloc!r} is not HOST or HOST:PORT")
    if where["port"] is not None and not 0 < int(where["port"]) < 65536:
        raise ConfigError(f"{url!r} in {text!r}: the port must be a number from 1 to 65535")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ConfigError(
            f"{url!r} in {text!r} has a query or fragment: give the scheme, host, port and a base path only"
        )
    return Upstream(m["name"], url, port)


# A DNS name (underscores allowed, as mitmproxy allows them), an IPv4 address or an IPv6 one in
# brackets, and an optional port.
_NETLOC = re.compile(r"(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d{1,5}))?")


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tib": 1 << 40,
}


def parse_size(text: str) -> int:
    """A byte size: 65536, 64KiB, 10MB, 1GiB."""
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if not m or m[2].lower() not in _UNITS:
        raise ConfigError(f"{text!r} is not a size (e.g. 65536, 64KiB, 10MiB)")
    return int(m[1]) * _UNITS[m[2].lower()]


EFFECTS = ("read", "inference", "write", "destructive")


def parse_body_limit(text: str) -> tuple[str | None, int]:
    """SIZE (every effect not named) or EFFECT=SIZE (read, inference, write, destructive): 64KiB,
    read=0."""
    effect, eq, size = text.rpartition("=")
    if eq and effect.strip() not in EFFECTS:
        raise ConfigError(
            f"{text!r}: {effect.strip()!r} is not an effect; give SIZE or EFFECT=SIZE with EFFECT one of "
            f"{', '.join(EFFECTS)} (e.g. read=0, destructive=1MiB)"
        )
    try:
        return (effect.strip() if eq else None), parse_size(size)
    except ConfigError:
        raise ConfigError(
            f"{text!r} is not SIZE or EFFECT=SIZE (e.g. 64KiB, read=0, destructive=1MiB)"
        ) from None


def parse_age(text: str) -> float:
    """A length of time in seconds: a number and a unit (s, m, h, d, w), e.g. 90s, 2h, 7d
    (proxy/ops/times.py reads it)."""
    try:
        return times.parse_age(text)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def parse_seconds(text: str) -> float:
    """A non-negative number of seconds: 1, 0.5, 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise ConfigError(f"{text!r} is not a number of seconds between 0 and 3600")
    return value


def parse_count(text: str) -> int:
    """A non-negative whole number: 0, 1000."""
    if not text.isdigit() or int(text) > 1 << 32:
        raise ConfigError(f"{text!r} is not a whole number from 0 to {1 << 32} (e.g. 1000; 0 turns it off)")
    return int(text)


def parse_uid(text: str) -> int:
    """A numeric user ID."""
    if not text.isdigit() or int(text) > 2**32 - 2:
        raise ConfigError(f"{text!r} is not a numeric user ID (e.g. 1000; `id -u NAME` prints it)")
    return int(text)


def parse_agent_uid(text: str) -> tuple[int, str]:
    """UID=NAME (`run --agent-uid`): connections captured from user UID are agent NAME's."""
    uid, eq, name = text.partition("=")
    if not eq or not uid.isdigit() or int(uid) > 2**32 - 2 or not name.strip() or not name.isprintable():
        raise ConfigError(f"{text!r} is not UID=NAME (e.g. 1001=billing-bot; `id -u USER` prints the UID)")
    return int(uid), name


def parse_port(text: str) -> int:
    """A TCP port number."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"{text!r} is not a port (1-65535)")
    return int(text)


def parse_resolver(text: str) -> str:
    """A DNS resolver's IP address (IPv4 or IPv6)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(f"{text!r} is not an IP address (e.g. 10.0.0.2 or fd00::53)") from None


def parse_agent(text: str) -> str:
    """An agent's name as actions record it: not empty, no control characters."""
    if not text.strip() or not text.isprintable():
        raise ConfigError(f"{text!r} is not an agent name (e.g. billing-bot): it names the agent in the log")
    return text


_SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def parse_server_name(text: str) -> str:
    """An MCP server's name in the log (`airlock mcp --name`): letters, digits, `_`, `.`, `-`."""
    if not _SERVER_NAME.fullmatch(text) or len(text) > 100:
        raise ConfigError(
            f"{text!r} is not a server name (e.g. github or notes-server: letters, digits, _ . -): "
            "it names the server in the log"
        )
    return text


def parse_otlp_endpoint(text: str) -> str:
    """An OTLP/HTTP logs endpoint: an http:// or https:// URL; one with no path gets the logs
    path `/v1/logs`, as OpenTelemetry's OTEL_EXPORTER_OTLP_ENDPOINT does."""
    url = urlsplit(text)
    if "@" in url.netloc:
        raise ConfigError(f"{text!r} carries credentials: give them in OTEL_EXPORTER_OTLP_HEADERS instead")
    where = _NETLOC.fullmatch(url.netloc)
    if url.scheme not in ("http", "https") or not url.hostname or not where:
        raise ConfigError(
            f"{text!r} is not an http:// or https:// URL of a collector "
            "(e.g. http://127.0.0.1:4318 or https://collector:4318/v1/logs)"
        )
    if where["port"] is not None and not 0 < int(where["port"]) < 65536:
        raise ConfigError(f"{text!r}: the port must be a number from 1 to 65535")
    if url.query or url.fragment or text.endswith(("?", "#")):
        raise ConfigError(f"{text!r} has a query or fragment: give the scheme, host, port and path only")
    return text if url.path not in ("", "/") else text.rstrip("/") + "/v1/logs"


def parse_http_url(text: str) -> str:
    """An http:// or https:// URL with a host."""
    url = urlsplit(text)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ConfigError(
            f"{text!r} is not an http:// or https:// URL (e.g. https://api.example.com/v1/items)"
        )
    return text
