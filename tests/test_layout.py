"""The folder tree is the architecture: which package may import which, checked on the source and
on what a running interpreter loads."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Inside proxy/: the folders each folder may import from (besides itself and proxy/errors.py).
ALLOWED = {
    "core": set(),
    "mcp": {"core", "ops"},
    "ops": {"core"},
    "routing": {"core", "ops"},
    "plane": {"core", "mcp", "ops"},
    "cli": {"core", "mcp", "ops", "plane", "routing"},
}
MITMPROXY_FREE = ("core", "mcp", "ops", "routing")


def _modules(package: str) -> Iterator[Path]:
    yield from sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every module `path` imports, as an absolute dotted name, with its line."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    package = parts[:-1]  # a module's package; an __init__'s is its own folder
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield module, node.lineno
            for alias in node.names:  # `from proxy.core import keys` imports proxy.core.keys
                yield f"{module}.{alias.name}", node.lineno


def _folder(path: Path) -> str:
    parts = path.relative_to(ROOT / "proxy").parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def _folder_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "proxy" or len(parts) < 2:
        return None
    return parts[1]


def test_store_and_rules_import_nothing_of_the_proxy_nor_each_other() -> None:
    found = []
    for package, forbidden in (("store", ("proxy", "rules")), ("rules", ("proxy", "store"))):
        for path in _modules(package):
            for module, line in _imports(path):
                if module.split(".")[0] in forbidden:
                    found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert found == []


def test_proxy_reaches_rules_and_store_only_through_their_faces() -> None:
    found = []
    for path in _modules("proxy"):
        for module, line in _imports(path):
            top, _, rest = module.partition(".")
            if top in ("rules", "store") and rest and not _is_name_from_face(top, rest):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert found == []


def _is_name_from_face(package: str, rest: str) -> bool:
    """`from rules import Action` yields `rules.Action`: a name of the face, not a module."""
    return "." not in rest and not (ROOT / package / f"{rest}.py").exists()


def test_each_folder_of_the_proxy_imports_only_the_folders_below_it() -> None:
    found = []
    for path in _modules("proxy"):
        own = _folder(path)
        if own in ("__init__", "errors"):
            continue
        for module, line in _imports(path):
            other = _folder_of(module)
            if other is None or other in (own, "errors"):
                continue
            if other not in ALLOWED[own]:
                found.append(f"{path.relative_to(ROOT)}:{line} ({own}) imports {module} ({other})")
    assert found == []


def test_only_the_data_plane_names_mitmproxy_in_an_import() -> None:
    found = []
    for path in _modules("proxy"):
        if _folder(path) == "plane":
            continue
        for module, line in _imports(path):
            if module.split(".")[0] == "mitmproxy":
                found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert found == []


def _loaded_after(code: str) -> list[str]:
    """The mitmproxy modules a fresh interpreter has loaded after running `code`."""
    report = "print(json.dumps(sorted(m for m in sys.modules if m.startswith('mitmproxy'))))"
    probe = f"{code}\nimport json, sys\n{report}"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("folder", MITMPROXY_FREE)
def test_importing_a_folder_outside_the_data_plane_loads_no_mitmproxy(folder: str) -> None:
    modules = [
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in _modules(f"proxy/{folder}")
    ]
    assert modules, f"proxy/{folder} has no modules"
    assert _loaded_after("\n".join(f"import {m}" for m in modules)) == []


def test_the_commands_that_read_the_log_load_no_mitmproxy(tmp_path: Path) -> None:
    from store import Log

    Log.open(tmp_path / "log").close()
    data = str(tmp_path)
    run = (
        "from proxy.cli import main\n"
        f"codes = [main(argv) for argv in (['log', '--data', {data!r}], ['verify', '--data', {data!r}])]\n"
        "assert codes == [0, 0], codes\n"
    )
    assert _loaded_after(run) == []
    # The probe sees mitmproxy when it is loaded: the command that runs the proxy loads it.
    assert "mitmproxy.master" in _loaded_after("from proxy.plane.server import serve")
