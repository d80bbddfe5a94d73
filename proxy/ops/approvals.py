"""The approvals page at /ui: plain HTML, CSS and JavaScript served by the control API, no build
step. The page holds no data of its own: it asks for the control token once and reads and votes
through the API with it. A strict Content-Security-Policy allows only its own script, style and
requests to the same origin."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

FILES = {
    "/ui": ("index.html", "text/html"),
    "/ui/app.js": ("app.js", "text/javascript"),
    "/ui/app.css": ("app.css", "text/css"),
}
PATHS = frozenset(FILES)  # open without the token: the page carries nothing but itself

POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _read(name: str) -> bytes:
    return resources.files("proxy.ops").joinpath("page", name).read_bytes()


async def page(request: web.Request) -> web.Response:
    """GET /ui, /ui/app.js, /ui/app.css."""
    name, kind = FILES[request.path]
    return web.Response(
        body=_read(name),
        content_type=kind,
        charset="utf-8",
        headers={
            "Content-Security-Policy": POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )


def routes() -> list[web.RouteDef]:
    """The page's routes."""
    return [web.get(path, page) for path in FILES]
