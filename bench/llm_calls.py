"""What Airlock costs an agent's own model calls: direct vs through `airlock run`, with the official
`openai` and `anthropic` SDKs, streamed and not; and the log bytes each model call leaves.

Usage: ``.venv/bin/python bench/llm_calls.py [--calls N] [--rounds R] [--prompt-kib K] [--before PATH]
[--now PATH]``

A real provider cannot be reached from here, so the calls go to the fake provider of the tests
(tests/support/models.py: it answers as Anthropic Messages and OpenAI Chat Completions do, streamed
and not), served over HTTPS on loopback in its own process, as a provider is. Each call sends a
prompt of `--prompt-kib` KiB (a system prompt and a user turn, as an agent's growing context) and
reads a completion of about 60 tokens (streamed as one event per token). Four kinds of call:
openai chat.completions.create and anthropic messages.create, each with stream off and on.

Timing: for each kind, every target (direct, and airlock; with --before, the airlock of another
checkout too) makes `--calls` calls one after another (after a warm-up) from a fresh process that
keeps one SDK client, as an agent does. Time to first token is when the first text delta arrives
(for a call that is not streamed, when the whole answer has); total is when the answer is read to
its end. Rounds alternate the order of the targets; the table shows medians over rounds, and the
added milliseconds are the median of each round's paired difference.

The log: for each kind, a fresh `airlock run` takes one call (the pages every log has from then
on), then `--calls` more; the growth of the pages the log's LMDB databases use, divided by the
calls, is the bytes per model call, and the syncs its threads make meanwhile (counted with
strace, when it is installed), the syncs per call. With `--before PATH` (a checkout of an
earlier version, e.g. `git worktree add /tmp/before 36672b7`), its airlock is measured the same
way, with PATH first on PYTHONPATH; `--now PATH` measures another checkout as "now" instead of
this one (a worktree of a commit, when this checkout has changes not committed). The rules are
the same for both, except that only versions that know model calls get `llm: endpoints`
naming the fake provider's host (the providers' own hosts need none).

A measurement, never a test: it exits 0 once it has measured. Internal roles of the same file:
``llm_calls.py provider ...`` and ``llm_calls.py calls ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import lmdb

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE.parent))

from overhead import Processes, free_port, http_ok, orchestrated, tail  # noqa: E402  (the sibling script)

AIRLOCK = str(Path(sys.executable).parent / "airlock")
STARTUP_SECONDS = 60.0
KINDS = ("openai", "openai stream", "anthropic", "anthropic stream")
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5"}
ANSWER_WORDS = 60  # the completion: about one token per word, streamed one word per event

RULES = """\
version: 1
egress:
  allow: [127.0.0.1, localhost]
"""
LLM_ENDPOINTS = "llm:\n  endpoints: [127.0.0.1, localhost]\n"


# ---- the provider (its own process) ------------------------------------------------------------


def serve_provider(port: int, cert: Path, key: Path, prompt_kib: int) -> None:
    """The tests' fake provider on loopback `port` over TLS, answering every call with the same
    text; prints the port once listening, then serves until it is stopped."""
    from tests.support.models import ModelServer, Turn, _handler

    text = " ".join(f"word{i}" for i in range(ANSWER_WORDS))
    # About 4 bytes of prompt per token, as providers count English and code.
    turn = Turn(text=text, input_tokens=prompt_kib * 1024 // 4, output_tokens=ANSWER_WORDS)
    models = ModelServer(port=port, default=turn)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    # serving_models() serves plain HTTP; a provider is reached over TLS, so the same handler is
    # served here on a TLS socket.
    httpd = Provider(("127.0.0.1", port), _handler(models))
    httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=forget_requests, args=(models,), daemon=True).start()
    print(port, flush=True)
    httpd.serve_forever()


class Provider(ThreadingHTTPServer):
    """The server with Nagle's algorithm off, as providers' servers run: the handler writes an
    answer's head and body apart, and on loopback the delayed ACK would add 40 ms to each."""

    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection (after its TLS handshake) and send its writes at once."""
        conn, peer = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, peer


def forget_requests(models: Any) -> None:
    """Drop the requests the server records (the tests read them; here they would only grow)."""
    while True:
        time.sleep(1)
        with models.lock:
            models.received.clear()


# ---- the calls (a process of their own per measurement) -------------------------------------------


@dataclass(frozen=True)
class Timings:
    """One measurement: milliseconds to the first token and to the end of each call."""

    first_ms: list[float]
    total_ms: list[float]


def prompt_of(kib: int) -> tuple[str, str]:
    """A system prompt and a user turn of `kib` KiB together: an agent's instructions and context."""
    line = "You are a careful coding agent. Read the files you are given before you change them.\n"
    system = (line * (kib * 1024 // 2 // len(line) + 1))[: kib * 1024 // 2]
    context = "def handler(event):\n    return {'status': 200, 'body': event['body']}\n"
    user = (context * (kib * 1024 // 2 // len(context) + 1))[: kib * 1024 - len(system)]
    return system, user


def sdk_client(sdk: str, base: str, proxy: str | None, ca: Path) -> Any:
    """The SDK's client for the provider at `base`, through `proxy` if given, trusting `ca`."""
    import httpx2  # the HTTP client both SDKs are built on

    tls = ssl.create_default_context(cafile=str(ca))
    tls.verify_flags &= ~ssl.VERIFY_X509_STRICT  # the test CA's certificates are minimal
    http = httpx2.Client(proxy=proxy, verify=tls, timeout=60, trust_env=False)
    if sdk == "openai":
        import openai

        return openai.OpenAI(base_url=f"{base}/v1", api_key="sk-bench", http_client=http, max_retries=0)
    import anthropic

    return anthropic.Anthropic(base_url=base, api_key="sk-ant-bench", http_client=http, max_retries=0)


def one_call(client: Any, kind: str, system: str, user: str) -> tuple[float, float]:
    """Make one call of `kind`; return the seconds to its first text and to its end."""
    sdk, _, streamed = kind.partition(" ")
    start = time.perf_counter()
    first: float | None = None
    if sdk == "openai":
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        if streamed:
            for chunk in client.chat.completions.create(model=MODELS[sdk], messages=messages, stream=True):
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter()
        else:
            answer = client.chat.completions.create(model=MODELS[sdk], messages=messages)
            assert answer.choices[0].message.content
    else:
        request = {
            "model": MODELS[sdk],
            "max_tokens": 1024,
            "system": system,
            "messages": [{"role": "user", "content": user}],
        }
        if streamed:
            for event in client.messages.create(**request, stream=True):
                if first is None and event.type == "content_block_delta":
                    first = time.perf_counter()
        else:
            answer = client.messages.create(**request)
            assert answer.content[0].text
    end = time.perf_counter()
    if streamed and first is None:
        raise RuntimeError(f"{kind}: the stream carried no text")
    return (first or end) - start, end - start


def make_calls(kind: str, base: str, proxy: str | None, ca: Path, n: int, warmup: int, kib: int) -> Timings:
    """`warmup` calls, then `n` timed ones, one after another on one client."""
    client = sdk_client(kind.split()[0], base, proxy, ca)
    system, user = prompt_of(kib)
    for _ in range(warmup):
        one_call(client, kind, system, user)
    calls = [one_call(client, kind, system, user) for _ in range(n)]
    return Timings([f * 1000 for f, _ in calls], [t * 1000 for _, t in calls])


# ---- processes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """An airlock to measure: this checkout's, or another's (its path first on PYTHONPATH)."""

    name: str
    checkout: Path | None

    def env(self) -> dict[str, str]:
        """The environment its processes run in."""
        env = dict(os.environ)
        if self.checkout is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.checkout), env.get("PYTHONPATH")) if p)
        return env

    def describe(self) -> str:
        """Its checkout and commit (`-dirty` when the checkout has changes not committed)."""
        where = self.checkout or ROOT
        commit = subprocess.run(
            ["git", "-C", str(where), "describe", "--always", "--dirty"], capture_output=True, text=True
        )
        return f"{where} at {commit.stdout.strip() or 'an unknown commit'}"

    def knows_model_calls(self) -> bool:
        """Whether its rules accept `llm: endpoints`."""
        schema = json.loads(((self.checkout or ROOT) / "rules" / "schema.json").read_text())
        return "llm" in schema["properties"]


@dataclass
class Airlock:
    """A running `airlock run` of one version."""

    version: Version
    proxy: str
    data: Path
    proc: subprocess.Popen[bytes]


def start_airlock(procs: Processes, version: Version, work: Path, upstream_ca: Path) -> Airlock:
    """`airlock run` of `version` in a fresh data dir under `work`, trusting the provider's CA."""
    work.mkdir(parents=True)
    port, control = free_port(), free_port()
    rules = work / "rules.yaml"
    rules.write_text(RULES + (LLM_ENDPOINTS if version.knows_model_calls() else ""))
    cmd = [AIRLOCK, "run", "--data", str(work / "data"), "--rules", str(rules)]
    cmd += ["--listen", f"127.0.0.1:{port}", "--control", f"127.0.0.1:{control}"]
    cmd += ["--upstream-ca", str(upstream_ca)]
    output = work / "airlock.out"
    proc = procs.start(cmd, output, env=version.env())
    deadline = time.monotonic() + STARTUP_SECONDS
    while not http_ok(f"http://127.0.0.1:{control}/healthz"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"airlock ({version.name}) did not start:\n{tail(output)}")
        time.sleep(0.05)
    return Airlock(version, f"http://127.0.0.1:{port}", work / "data", proc)


@contextlib.contextmanager
def provider(procs: Processes, work: Path, prompt_kib: int) -> Iterator[tuple[str, Path]]:
    """The fake provider over HTTPS in its own process: its base URL and the CA of its certificate."""
    from tests.support.ca import UpstreamCA

    ca = UpstreamCA.create(work)
    port = free_port()
    output = work / "provider.err"
    cmd = [sys.executable, str(HERE), "provider", "--port", str(port), "--prompt-kib", str(prompt_kib)]
    proc = procs.start(
        [*cmd, "--cert", str(ca.server_cert), "--key", str(ca.server_key)], output, pipe_stdout=True
    )
    assert proc.stdout is not None
    if not proc.stdout.readline().strip().isdigit():
        raise RuntimeError(f"the provider did not start (exit status {proc.wait()}):\n{tail(output)}")
    try:
        yield f"https://localhost:{port}", ca.cert
    finally:
        procs.stop(proc)


def measure(kind: str, base: str, proxy: str | None, ca: Path, args: argparse.Namespace) -> Timings:
    """One measurement in a fresh process."""
    cmd = [sys.executable, str(HERE), "calls", "--kind", kind, "--base", base, "--ca", str(ca)]
    cmd += ["--calls", str(args.calls), "--warmup", str(args.warmup), "--prompt-kib", str(args.prompt_kib)]
    if proxy:
        cmd += ["--proxy", proxy]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} via {proxy or 'direct'} failed:\n{done.stderr[-3000:]}")
    return Timings(**json.loads(done.stdout))


# ---- timing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where calls go: straight to the provider, or through one airlock (and its CA)."""

    name: str
    proxy: str | None
    ca: Path


Runs = dict[tuple[str, str], list[Timings]]  # (kind, target) -> one Timings per round


def run_rounds(targets: list[Target], base: str, args: argparse.Namespace) -> Runs:
    """Every kind through every target, `args.rounds` times, the targets' order rotating."""
    runs: Runs = {}
    for r in range(args.rounds):
        for kind in KINDS:
            k = r % len(targets)
            for target in targets[k:] + targets[:k]:
                t = measure(kind, base, target.proxy, target.ca, args)
                runs.setdefault((kind, target.name), []).append(t)
                print(
                    f"  round {r + 1}/{args.rounds}  {kind:<17} {target.name:<15} first "
                    f"{statistics.median(t.first_ms):7.2f} ms  total {statistics.median(t.total_ms):7.2f} ms",
                    flush=True,
                )
    return runs


def median_of(rounds: list[Timings], attr: str) -> float:
    """The median over rounds of each round's median."""
    return float(statistics.median(statistics.median(getattr(t, attr)) for t in rounds))


def paired_added(runs: Runs, kind: str, target: str, attr: str) -> float:
    """The median over rounds of target's median minus direct's, in the same round."""
    pairs = zip(runs[(kind, target)], runs[(kind, "direct")], strict=True)
    return float(
        statistics.median(
            statistics.median(getattr(a, attr)) - statistics.median(getattr(d, attr)) for a, d in pairs
        )
    )


def print_timing(targets: list[Target], runs: Runs) -> None:
    """Medians per kind and target, and what each airlock adds over direct."""
    print()
    print(
        f"{'call':<17} {'target':<15} {'first token ms':>15} {'total ms':>9} "
        f"{'added first':>12} {'added total':>12} {'total/direct':>13}"
    )
    print("-" * 98)
    for kind in KINDS:
        direct_total = median_of(runs[(kind, "direct")], "total_ms")
        for t in targets:
            rounds = runs[(kind, t.name)]
            first, total = median_of(rounds, "first_ms"), median_of(rounds, "total_ms")
            extra = ""
            if t.proxy is not None:
                extra = (
                    f"{paired_added(runs, kind, t.name, 'first_ms'):>+11.2f}  "
                    f"{paired_added(runs, kind, t.name, 'total_ms'):>+11.2f}  {total / direct_total:>12.2f}"
                )
            print(f"{kind:<17} {t.name:<15} {first:>15.2f} {total:>9.2f} {extra}")


# ---- log bytes ---------------------------------------------------------------------------------


def used_bytes(log: Path) -> int:
    """Bytes in the pages every database of the log uses (freed pages not counted)."""
    env = lmdb.open(str(log), readonly=True, lock=False, max_dbs=64)
    try:
        with env.begin() as txn:
            stat = txn.stat()
            pages = 2 + stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
            for name, _ in txn.cursor():
                db = env.open_db(bytes(name), txn=txn, create=False)
                s = txn.stat(db)
                pages += s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]
            return int(pages * stat["psize"])
    finally:
        env.close()


def last_action(a: Airlock) -> dict[str, Any]:
    """The newest action of `a`'s log as `airlock log --json` prints it."""
    done = subprocess.run(
        [AIRLOCK, "log", "--json", "--all", "--data", str(a.data)],
        capture_output=True,
        text=True,
        check=True,
        env=a.version.env(),
    )
    return dict(json.loads(done.stdout.splitlines()[-1]))


SYNCS = ("fsync", "fdatasync", "msync", "sync_file_range")


@contextlib.contextmanager
def counting_syncs(pid: int, work: Path) -> Iterator[list[int]]:
    """Count the syncs (fsync, fdatasync, msync) every thread of `pid` makes within the block,
    with strace; the list it yields holds the count afterwards (and stays empty without strace)."""
    counted: list[int] = []
    strace = shutil.which("strace")
    if strace is None:
        yield counted
        return
    summary, attached = work / "strace.summary", work / "strace.err"
    cmd = [strace, "-f", "-c", "-e", f"trace={','.join(SYNCS)}", "-o", str(summary), "-p", str(pid)]
    with attached.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    deadline = time.monotonic() + 10
    while "attached" not in attached.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield counted
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    # strace -c: "% time  seconds  usecs/call  calls  [errors]  syscall", one line per syscall.
    rows = [line.split() for line in summary.read_text().splitlines()]
    counted.append(sum(int(row[3]) for row in rows if len(row) >= 5 and row[-1] in SYNCS))


@dataclass(frozen=True)
class LogCost:
    """What a model call costs the log of one version: bytes, syncs, and how it was logged."""

    bytes_per_call: float
    syncs_per_call: float | None
    logged_as: str


def log_cost(
    procs: Processes, version: Version, kind: str, base: str, ca: Path, work: Path, args: argparse.Namespace
) -> LogCost:
    """Log bytes and syncs per call of `kind` through a fresh airlock of `version`."""
    a = start_airlock(procs, version, work, ca)
    trusted = a.data / "ca" / "mitmproxy-ca-cert.pem"
    try:
        measure(kind, base, a.proxy, trusted, argparse.Namespace(**{**vars(args), "calls": 1, "warmup": 0}))
        time.sleep(0.5)  # the outcome is written once the answer has gone: let it land
        before = used_bytes(a.data / "log")
        with counting_syncs(a.proc.pid, work) as syncs:
            measure(kind, base, a.proxy, trusted, argparse.Namespace(**{**vars(args), "warmup": 0}))
            time.sleep(0.5)
    finally:
        procs.stop(a.proc)
    after = used_bytes(a.data / "log")
    action = last_action(a)
    logged_as = "/".join(str(action[k]) for k in ("protocol", "effect", "state") if action.get(k) is not None)
    return LogCost((after - before) / args.calls, syncs[0] / args.calls if syncs else None, logged_as)


def print_log_costs(
    versions: list[Version], base: str, ca: Path, work: Path, procs: Processes, args: argparse.Namespace
) -> None:
    """Bytes of log and syncs per model call, by kind and version, and how the log names a call."""
    print()
    print(
        f"The log per model call ({args.calls} calls of each kind, {args.prompt_kib} KiB prompts; "
        f"syncs: {', '.join(SYNCS)} by any thread, counted with strace):"
    )
    head = "".join(f" {v.name + ' bytes':>14} {v.name + ' syncs':>14}" for v in versions)
    print(f"{'call':<17}{head}   logged as")
    for kind in KINDS:
        cells, seen = "", []
        for v in versions:
            cost = log_cost(procs, v, kind, base, ca, work / f"log-{v.name}-{kind.replace(' ', '-')}", args)
            syncs = "n/a" if cost.syncs_per_call is None else f"{cost.syncs_per_call:.2f}"
            cells += f" {cost.bytes_per_call:>14,.0f} {syncs:>14}"
            seen.append(f"{v.name}: {cost.logged_as}")
        print(f"{kind:<17}{cells}   " + "; ".join(seen))


# ---- the orchestrator --------------------------------------------------------------------------


def orchestrate(args: argparse.Namespace) -> None:
    """Start the provider and the airlocks, time every kind of call, then measure log bytes."""
    began = time.monotonic()
    versions = [Version("now", args.now.resolve() if args.now else None)]
    if args.before is not None:
        versions.append(Version("before", args.before.resolve()))
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="airlock-bench-llm-") as tmp:
        work = Path(tmp)
        try:
            with provider(procs, work, args.prompt_kib) as (base, ca):
                print(
                    f"{len(KINDS)} kinds of model call to {base} ({args.prompt_kib} KiB prompts, "
                    f"{ANSWER_WORDS}-token answers); {args.rounds} rounds x {args.calls} calls "
                    f"(+{args.warmup} warm-up) per target; cpus: {os.cpu_count()}"
                )
                for v in versions:
                    print(f"  airlock {v.name}: {v.describe()}")
                targets = [Target("direct", None, ca)]
                for v in versions:
                    a = start_airlock(procs, v, work / f"timing-{v.name}", ca)
                    targets.append(
                        Target(f"airlock {v.name}", a.proxy, a.data / "ca" / "mitmproxy-ca-cert.pem")
                    )
                runs = run_rounds(targets, base, args)
                print_timing(targets, runs)
                print_log_costs(versions, base, ca, work, procs, args)
        finally:
            procs.stop_all()
    print(f"\nTook {time.monotonic() - began:.0f} s.")


# ---- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Flags of the benchmark, and the internal roles it starts itself in."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=100, help="timed calls per measurement (default 100)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all targets (default 3)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up calls per measurement (default 10)")
    p.add_argument("--prompt-kib", type=int, default=32, help="prompt size in KiB (default 32)")
    p.add_argument("--before", type=Path, help="a checkout of an earlier version to measure too")
    p.add_argument("--now", type=Path, help="a checkout to measure as now (default: this one)")
    sub = p.add_subparsers(dest="role", metavar="")
    prov = sub.add_parser("provider", help="(internal) serve the fake provider")
    prov.add_argument("--port", type=int, required=True)
    prov.add_argument("--cert", type=Path, required=True)
    prov.add_argument("--key", type=Path, required=True)
    prov.add_argument("--prompt-kib", type=int, required=True)
    calls = sub.add_parser("calls", help="(internal) make one measurement's calls, print JSON")
    calls.add_argument("--kind", choices=KINDS, required=True)
    calls.add_argument("--base", required=True)
    calls.add_argument("--proxy")
    calls.add_argument("--ca", type=Path, required=True)
    calls.add_argument("--calls", type=int, required=True)
    calls.add_argument("--warmup", type=int, default=0)
    calls.add_argument("--prompt-kib", type=int, required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the orchestrator or to one of the internal roles."""
    args = build_parser().parse_args(argv)
    if args.role == "provider":
        serve_provider(args.port, args.cert, args.key, args.prompt_kib)
        return 0
    if args.role == "calls":
        t = make_calls(args.kind, args.base, args.proxy, args.ca, args.calls, args.warmup, args.prompt_kib)
        print(json.dumps(asdict(t)))
        return 0
    if args.calls < 1 or args.rounds < 1 or args.warmup < 0 or args.prompt_kib < 1:
        build_parser().error("--calls, --rounds and --prompt-kib must be at least 1, --warmup at least 0")
    for flag, checkout in (("--before", args.before), ("--now", args.now)):
        if checkout is not None and not (checkout / "proxy" / "cli").is_dir():
            build_parser().error(f"{flag} {checkout}: not a checkout of airlock (no proxy/cli in it)")
    return orchestrated("llm_calls", orchestrate, args)


if __name__ == "__main__":
    sys.exit(main())
