"""Base paths of named upstreams: `--upstream tools=http://host:9000/mcp@9001` serves /mcp on
port 9001's `/`, and /mcp/x on its `/x`. mitmproxy's reverse mode takes no path, so the path
is put in front of each request's as its headers arrive, before any other hook reads it: the
rules, the log and the upstream all see the path the upstream receives."""

from __future__ import annotations

from collections.abc import Iterable

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode

from proxy.ops.config import Upstream


def under(base: str, path: str) -> str:
    """`path` (with its query) as asked of a listener whose upstream URL has path `base`: `/`
    is `base` itself, `/x` is `base/x`. Paths that are not absolute (`*`) stay as they are."""
    if not base or not path.startswith("/"):
        return path
    if path == "/" or path.startswith("/?"):
        return base + path[1:]
    return base.rstrip("/") + path


class BasePaths:
    """Puts each reverse listener's base path in front of the paths its clients ask for."""

    def __init__(self, bases: dict[ProxyMode, str]):
        self.bases = bases

    @classmethod
    def of(cls, named: dict[ProxyMode, str], upstreams: Iterable[Upstream]) -> BasePaths:
        """The base paths of `upstreams`, keyed by the listener mode `named` gives each name."""
        by_name = {up.name: up.base for up in upstreams}
        return cls({mode: by_name[name] for mode, name in named.items() if by_name.get(name)})

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Rewrite the path of a request that came in on a listener with a base path."""
        base = self.bases.get(flow.client_conn.proxy_mode)
        if base:
            flow.request.path = under(base, flow.request.path)
