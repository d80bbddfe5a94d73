"""What redaction costs an action: `records.describe` with this redaction, the one before it, and none.

Usage: ``.venv/bin/python bench/redaction.py [--before REV] [--repeats R] [--batch-ms MS]``

The previous redaction (the package `proxy/core/redact/`, or the single module it was before) is
read from git at REV into a temporary package, so both are measured in the same run on the same
actions. REV defaults to HEAD when the working copy of the redaction differs from it, else to
the commit before the last one that changed it. A third column, "none", swaps in a redaction
that returns everything as it is: the floor of `describe` (building the record, digesting the body).

The actions are POSTs with the headers an agent SDK sends (one of them a bearer credential) and
bodies of the sizes that matter: a ~190-byte JSON body, 1 KiB of JSON, 64 KiB of JSON (small
records), of a model API request (long messages and `max_tokens`, a credential word in a name
that is not a credential's) and of plain text, and 1 KiB and 64 KiB of JSON with one secret
field (which makes redaction rewrite the body). JSON bodies are parsed once beforehand, as the
rules have parsed them when the log is written.

Timing: `time.perf_counter_ns` around batches sized to take `--batch-ms`; the best of `--repeats`
batches is kept, the three redactions taking turns within each repeat, with the garbage collector
off. It prints µs per call for each and the before/after ratio. It also checks that both
redactions log the same thing for every action. This is a measurement, not a test: it exits 0
once it has measured.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.core import records, redact  # noqa: E402
from rules import Action, Effect, json_of  # noqa: E402

MODULE = "proxy/core/redact"
EARLIER = ("proxy/core/redact.py", "proxy/redact.py")  # where it lived before, newest first


# ---- the redactions ---------------------------------------------------------------------------


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def before_rev() -> str:
    """HEAD when the working copy of the redaction differs from it, else the commit before the
    last change to it."""
    if _git("diff", "--name-only", "HEAD", "--", MODULE, *EARLIER).strip():
        return "HEAD"
    # The last commit that changed its content (a pure move is not a change).
    changed = _git("log", "--diff-filter=AM", "-n", "1", "--format=%H", "--", MODULE, *EARLIER)
    return changed.strip() + "~"


def path_at(rev: str) -> str:
    """Where the redaction lived at `rev`."""
    for path in (MODULE, *EARLIER):
        found = subprocess.run(["git", "cat-file", "-e", f"{rev}:{path}"], cwd=ROOT, capture_output=True)
        if found.returncode == 0:
            return path
    raise SystemExit(f"no redaction at {rev}: pass --before with a revision that has one")


def load_before(rev: str, into: Path) -> ModuleType:
    """The redaction as it was at `rev`, imported under another name (a package, or one module)."""
    path = path_at(rev)
    name = "redact_before"
    if path.endswith(".py"):
        file = into / f"{name}.py"
        file.write_text(_git("show", f"{rev}:{path}"))
        spec = importlib.util.spec_from_file_location(name, file)
    else:
        package = into / name
        package.mkdir()
        for module in _git("ls-tree", "--name-only", f"{rev}:{path}").split():
            (package / module).write_text(_git("show", f"{rev}:{path}/{module}"))
        spec = importlib.util.spec_from_file_location(
            name, package / "__init__.py", submodule_search_locations=[str(package)]
        )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, and the package's own modules, look it up
    spec.loader.exec_module(module)
    return module


class _NoRedactor:
    def url(self, raw: str) -> str:
        return raw

    def headers(self, headers: Any) -> dict[str, str]:
        return dict(headers)

    def args(self, value: object) -> object:
        return value


NONE = SimpleNamespace(
    text=lambda value: value, body=lambda data, ctype, parsed=None: data, Redactor=_NoRedactor
)


@contextmanager
def redacting_with(module: Any) -> Iterator[None]:
    """`records` calls `module` for the duration."""
    saved = vars(records)["redact"]
    setattr(records, "redact", module)  # noqa: B010 (records does not export the name)
    try:
        yield
    finally:
        setattr(records, "redact", saved)  # noqa: B010


# ---- the actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One action to describe, with a short name for the report."""

    name: str
    action: Action


HEADERS = {
    "host": "api.service.example",
    "content-type": "application/json",
    "user-agent": "agent-sdk/1.4 (python 3.12)",
    "accept": "application/json",
    "accept-encoding": "gzip, deflate",
    "authorization": "Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0",
    "x-request-id": "5c0f7b1e-8d2a-4c3b-9e6f-1a2b3c4d5e6f",
}


def items(size: int, *, secret: bool = False) -> bytes:
    """A JSON body of about `size` bytes: a list of ordinary records, optionally one secret field."""
    rows: list[dict[str, Any]] = []
    doc: dict[str, Any] = {"items": rows, "page": 1}
    if secret:
        doc["api_token"] = "tk_3b9c1e2f4a5d6e7f8091a2b3c4d5e6f7"
    i = 0
    while len(json.dumps(doc)) < size - 120:
        rows.append(
            {
                "id": i,
                "name": f"widget {i}",
                "qty": i % 7,
                "price": 9.5,
                "tags": ["bench", "blue"],
                "ok": True,
            }
        )
        i += 1
    return json.dumps(doc).encode()


def chat(size: int) -> bytes:
    """A model API request of about `size` bytes: `max_tokens` (a credential word in a name that
    is not a credential's) and a conversation of long messages."""
    turns: list[dict[str, str]] = []
    doc: dict[str, Any] = {"model": "large-model-2", "max_tokens": 1024, "messages": turns}
    text = prose(2000).decode()
    while len(json.dumps(doc)) < size - 2100:
        turns.append({"role": "user" if len(turns) % 2 == 0 else "assistant", "content": text})
    return json.dumps(doc).encode()


def prose(size: int) -> bytes:
    """About `size` bytes of plain text: log lines with URLs, numbers and punctuation."""
    line = (
        "2026-11-29 21:12:04 INFO request GET https://static.example.org/assets/app.js?v=42 took 12 ms, "
        "user agent-007 fetched 3 items (widget, gadget, sprocket) from the catalogue.\n"
    )
    return (line * (size // len(line) + 1))[:size].encode()


def post(name: str, body: bytes, content_type: str = "application/json") -> Case:
    """A POST of `body` to a service."""
    headers = {**HEADERS, "content-type": content_type}
    action = Action(
        "POST", "https", "api.service.example", 443, "/v1/items", Effect.WRITE, headers=headers, body=body
    )
    return Case(name, action)


def cases() -> list[Case]:
    """The actions of the report, JSON bodies parsed beforehand (as the rules have)."""
    small = json.dumps(
        {
            "name": "widget",
            "qty": 3,
            "tags": ["bench", "blue"],
            "owner": "agent-007",
            "note": "restock shelf 4",
        }
    )
    small += " " * max(0, 190 - len(small))
    out = [
        post(f"{len(small)} B JSON", small.encode()),
        post("1 KiB JSON", items(1024)),
        post("1 KiB JSON, secret field", items(1024, secret=True)),
        post("64 KiB JSON", items(64 * 1024 - 200)),
        post("64 KiB JSON, secret field", items(64 * 1024 - 200, secret=True)),
        post("64 KiB chat JSON", chat(64 * 1024 - 200)),
        post("64 KiB text", prose(64 * 1024 - 200), "text/plain"),
    ]
    for case in out:
        assert case.action.body is not None
        json_of(case.action.body)
    return out


# ---- timing -----------------------------------------------------------------------------------


def batch_ns(call: Callable[[], object], n: int) -> int:
    """Nanoseconds for `n` calls."""
    start = time.perf_counter_ns()
    for _ in range(n):
        call()
    return time.perf_counter_ns() - start


def describing(action: Action, redactor: Any, policy: records.BodyPolicy) -> Callable[[], object]:
    """One `describe` of `action`, ready to time."""
    return lambda: records.describe(action, redactor=redactor, bodies=policy)


def measure(
    modules: dict[str, Any], all_cases: list[Case], repeats: int, batch_ms: float
) -> dict[tuple[str, str], float]:
    """Best µs per `describe` for every redaction on every action; they take turns."""
    policy = records.BodyPolicy()
    calls: dict[tuple[str, str], tuple[Any, Callable[[], object]]] = {}
    for name, module in modules.items():
        redactor = module.Redactor()
        for case in all_cases:
            calls[(name, case.name)] = (module, describing(case.action, redactor, policy))
    sizes: dict[tuple[str, str], int] = {}
    for key, (module, call) in calls.items():
        with redacting_with(module):
            trial = 5
            per_call = max(batch_ns(call, trial) / trial, 1.0)
            sizes[key] = max(trial, int(batch_ms * 1e6 / per_call))
    best = {key: float("inf") for key in calls}
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for case in all_cases:
                for name in modules:
                    key = (name, case.name)
                    module, call = calls[key]
                    with redacting_with(module):
                        took = batch_ns(call, sizes[key])
                    best[key] = min(best[key], took / sizes[key] / 1000)
    finally:
        if gc_was_on:
            gc.enable()
    return best


def same_records(before: Any, all_cases: list[Case]) -> list[str]:
    """The actions whose record differs between the two redactions."""
    policy = records.BodyPolicy()
    differ = []
    for case in all_cases:
        with redacting_with(before):
            old = records.describe(case.action, redactor=before.Redactor(), bodies=policy)
        new = records.describe(case.action, redactor=redact.Redactor(), bodies=policy)
        if old != new:
            differ.append(case.name)
    return differ


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="git revision of the redaction to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-ms", type=float, default=150.0)
    opts = parser.parse_args(argv)
    rev = opts.before or before_rev()
    with tempfile.TemporaryDirectory() as tmp:
        before = load_before(rev, Path(tmp))
    all_cases = cases()
    differ = same_records(before, all_cases)
    modules = {"before": before, "after": redact, "none": NONE}
    best = measure(modules, all_cases, opts.repeats, opts.batch_ms)
    print(f"records.describe, µs per call; before = {MODULE} at {_git('rev-parse', '--short', rev).strip()}")
    print(f"{'action body':<28}{'before':>10}{'after':>10}{'none':>10}{'before/after':>14}")
    for case in all_cases:
        b, a, n = (best[(m, case.name)] for m in modules)
        print(f"{case.name:<28}{b:>10.1f}{a:>10.1f}{n:>10.1f}{b / a:>13.1f}x")
    print("records the same before and after" if not differ else f"records DIFFER for: {', '.join(differ)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
