"""A capture test's world inside a namespace: recording servers (HTTP, UDP, DNS) as processes,
`airlock run` with a transparent listener, and curl as the agent's user."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .airlock import Airlock
from .namespaces import Netns, Processes
from .waiting import wait_for

NOBODY = 65534  # the agent's UID in the capture test
UPSTREAM_IP = "10.77.0.1"  # inside the test namespaces
PA, PB, PU = 18001, 18002, 18003  # fixed ports are fine inside a fresh namespace
LISTEN, CONTROL, TRANSPARENT = 8080, 8081, 8082


# The servers run as separate processes (inside namespaces, as root) and record what reaches them
# to a file, one JSON object per line; `ready` appears once the socket is bound.
SERVERS = textwrap.dedent(
    """\
    import json, socket, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from pathlib import Path

    kind, host, port, record, ready, answer = sys.argv[1:7]
    port = int(port)


    def note(entry):
        with open(record, "a") as f:
            f.write(json.dumps(entry) + "\\n")


    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            note({"path": self.path, "host": self.headers.get("Host")})
            body = json.dumps({"port": port, "path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


    def dns_answer(query):
        # The name asked for, and a reply: an A record `answer` for A queries, no records otherwise.
        end, labels = 12, []
        while query[end]:
            labels.append(query[end + 1 : end + 1 + query[end]].decode())
            end += 1 + query[end]
        qtype = int.from_bytes(query[end + 1 : end + 3], "big")
        count = 1 if qtype == 1 else 0
        header = query[:2] + b"\\x81\\x80" + b"\\x00\\x01" + count.to_bytes(2, "big") + bytes(4)
        record = b"\\xc0\\x0c\\x00\\x01\\x00\\x01" + (60).to_bytes(4, "big") + b"\\x00\\x04"
        record += socket.inet_aton(answer)
        return ".".join(labels), header + query[12 : end + 5] + (record if count else b"")


    if kind == "http":
        server = ThreadingHTTPServer((host, port), Handler)
        Path(ready).touch()
        server.serve_forever()
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, port))
        Path(ready).touch()
        while True:
            data, peer = sock.recvfrom(4096)
            if kind == "dns":
                name, reply = dns_answer(data)
                note({"name": name})
                sock.sendto(reply, peer)
            else:
                note({"data": data.decode(errors="replace")})
    """
)


@dataclass(frozen=True)
class Server:
    """A recording server process."""

    record: Path

    def seen(self) -> list[dict[str, Any]]:
        """What reached it so far."""
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]


def started(proc: subprocess.Popen[bytes], condition: Callable[[], bool], what: str, output: str) -> None:
    """Wait until `condition`; fail at once with the output if the process exits first."""

    def check() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{what}: exited {proc.returncode} first; output in {output}")
        return condition()

    wait_for(check, what)


def serve(procs: Processes, prefix: list[str], kind: str, host: str, port: int, answer: str = "") -> Server:
    """Start a recording server (`http`, `udp`, or `dns` answering `answer`) on host:port."""
    script = procs.root / "servers.py"
    script.write_text(SERVERS)
    name = f"{kind}-{host}-{port}"
    record, ready = procs.root / f"{name}.jsonl", procs.root / f"{name}.ready"
    args = [kind, host, str(port), str(record), str(ready), answer]
    proc = procs.start([*prefix, sys.executable, str(script), *args], name)
    started(proc, ready.exists, f"the {kind} server on {host}:{port} is up", str(procs.root / f"{name}.out"))
    return Server(record)


def start_airlock(procs: Processes, ns: Netns, root: Path, rules: str) -> Airlock:
    """`airlock run` as root inside the namespace, with a transparent listener."""
    (root / "rules.yaml").write_text(rules)
    a = Airlock(
        data=root / "data",
        rules=root / "rules.yaml",
        port=LISTEN,
        control_port=CONTROL,
        extra=("--transparent", f"127.0.0.1:{TRANSPARENT}"),
    )
    proc = procs.start(ns.exec(*a.command()), "airlock")
    healthz = f"http://127.0.0.1:{CONTROL}/healthz"
    ready = lambda: ns.run("curl", "-sf", "-m", "2", healthz).returncode == 0  # noqa: E731
    started(proc, ready, "airlock answers in the namespace", str(root / "airlock.out"))
    return a


@dataclass(frozen=True)
class Reply:
    """What curl got."""

    status: int
    body: str

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def curl_args(url: str) -> list[str]:
    """curl fetching `url` directly (no proxy, whatever the environment says), status last."""
    return ["curl", "-sS", "--noproxy", "*", "-m", "10", "-w", "\n%{http_code}", url]


def reply_of(done: subprocess.CompletedProcess[str]) -> Reply:
    """curl's output as a Reply; fail if curl failed."""
    assert done.returncode == 0, f"curl exited {done.returncode}: {done.stderr}"
    body, _, status = done.stdout.rpartition("\n")
    return Reply(int(status), body)


def logged(a: Airlock, n: int) -> list[dict[str, Any]]:
    """The log once it holds `n` actions (outcomes are written just after the client's answer)."""
    wait_for(lambda: len(a.log()) == n, f"the log holds {n} actions")
    return a.log()
