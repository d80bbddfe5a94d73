"""What signed checkpoints cost and save: `verify --since-checkpoint` against a full `verify`,
and what `--key` adds, on logs of growing size.

Usage: ``.venv/bin/python bench/checkpoints.py [--sizes 10000,100000] [--after 1000]``

For each size it builds a log through the store (`Log.append_soon`, the writer's group commit):
actions of two entries each (an intent, then an outcome), a signed checkpoint every 1000
entries, and `--after` entries after the last one. Then it times, in this process, `verify`
(the chain and every index), `verify` with the key (the same, plus every signature) and
`verify --since-checkpoint` with the key, and prints each and the ratio of the full check to
the recent one. A measurement, never a test: it prints a table and exits 0.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from store import ActionRef, ChainReport, Log, Record, Signer, State, checkpoint_record, parse_public

EVERY = 1000


def build(path: Path, entries: int, after: int, signer: Signer) -> None:
    """A log of about `entries` entries whose last checkpoint has `after` entries after it."""
    log = Log.open(path)
    log.start()
    written, since = 0, 0
    try:
        while written < entries:
            ref = ActionRef()
            log.append_soon(
                Record(
                    kind="intent",
                    action=ref,
                    state=State.PENDING,
                    new_action=True,
                    data={"method": "POST", "url": f"http://127.0.0.1/items/{written}"},
                    summary={"method": "POST", "url": f"http://127.0.0.1/items/{written}"},
                )
            )
            # The writer takes records in order: the intent has its id before the outcome is put.
            done = Record(kind="outcome", action=ref, state=State.COMMITTED, data={"status": 200})
            if written % 1000 == 0:
                log.append_blocking(done)
            else:
                log.append_soon(done)
            written, since = written + 2, since + 2
            left = entries - written
            if (since >= EVERY and left > after + EVERY // 2) or after - 2 < left <= after:
                log.append_blocking(checkpoint_record(signer.public_text(), signer.sign))
                written, since = written + 1, 0
    finally:
        log.close()


def timed(fn: Callable[[], ChainReport]) -> tuple[float, ChainReport]:
    """How long `fn` took, and what it returned."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="entries per log, comma-separated")
    parser.add_argument("--after", type=int, default=1000, help="entries after the last checkpoint")
    args = parser.parse_args()
    print(f"{'entries':>9} {'verify':>9} {'+ --key':>9} {'--since-checkpoint':>19} {'full/recent':>12}")
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as root:
            signer = Signer.load_or_create(Path(root))
            key = parse_public(signer.public_text())
            build(Path(root) / "log", size, args.after, signer)
            log = Log.open(Path(root) / "log", readonly=True)
            full, report = timed(log.verify)
            signed, with_key = timed(partial(log.verify, key=key))
            recent, since = timed(partial(log.verify_recent, key=key))
            assert report.ok and with_key.ok and since.ok, (report, with_key, since)
            ratio = signed / recent
            print(f"{report.checked:>9} {full:>8.3f}s {signed:>8.3f}s {recent:>18.4f}s {ratio:>11.0f}x")


if __name__ == "__main__":
    main()
