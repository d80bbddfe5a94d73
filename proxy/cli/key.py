"""`airlock key` (the log's public key) and what `airlock verify` does with keys and checkpoints:
`--key`, `--since-checkpoint`, `--checkpoints FILE`."""

from __future__ import annotations

import argparse
from pathlib import Path

from proxy.ops.datadir import DataDir
from store import KEY_FILE, ChainReport, Log, PublicKey, Signer, parse_public

from .args import Commands, UserError, data_arg


def add(sub: Commands) -> None:
    """`airlock key`."""
    key = sub.add_parser(
        "key",
        help="print the public key that signs the log's checkpoints (created if the data dir has none)",
    )
    data_arg(key)
    key.set_defaults(func=cmd_key)


def add_verify_flags(verify: argparse.ArgumentParser) -> None:
    """The flags of `airlock verify` about signatures and checkpoints."""
    verify.add_argument(
        "--key",
        metavar="PUBKEY",
        help="the public key `airlock key` printed (or a file holding it): every checkpoint and prune "
        "entry must carry its signature",
    )
    verify.add_argument(
        "--since-checkpoint",
        action="store_true",
        help="check only what came after the last checkpoint (the checkpoint itself, every later entry, "
        "and the actions they touch): its cost grows with the entries since, not with the log",
    )
    verify.add_argument(
        "--checkpoints",
        type=Path,
        metavar="FILE",
        help="the file --checkpoint-to wrote: the log must still hold its last checkpoint, unchanged "
        "(else it was cut short or rolled back)",
    )


def cmd_key(args: argparse.Namespace) -> int:
    """Print the data dir's public key; create the key pair only when there is none."""
    data = DataDir(args.data)
    data.check()
    if (data.root / KEY_FILE).exists():
        # Reading needs no write access to the data dir.
        signer = Signer.load(data.root)
    else:
        from proxy.ops.checkpoints import signer_for  # and its anchors' HTTP client: only here

        data.prepare()
        signer = signer_for(data)
    print(signer.public_text())
    return 0


def verified(args: argparse.Namespace, log: Log, expect: tuple[int, str] | None) -> ChainReport:
    """`verify` as its flags ask: the whole log or what came after the last checkpoint, with
    signatures checked against --key, and the last checkpoint of --checkpoints expected."""
    key = _key(args.key) if args.key is not None else None
    if args.checkpoints is not None:
        if expect is not None:
            raise UserError("give --expect or --checkpoints, not both: each names the head to expect")
        anchored = _anchored_head(args.checkpoints, key)
        if isinstance(anchored, str):
            return ChainReport(0, reason=anchored, failed=True)
        expect = anchored
    if args.since_checkpoint:
        return log.verify_recent(expect, key)
    return log.verify(expect, key)


def described(args: argparse.Namespace, verdict: ChainReport) -> str:
    """What an `ok` line adds for these flags."""
    notes = []
    if args.since_checkpoint:
        notes.append(f"from checkpoint {verdict.since}")
    if args.key is not None:
        notes.append(f"{verdict.signed} signatures good" if not args.since_checkpoint else "signatures good")
    if args.checkpoints is not None:
        notes.append(f"the last checkpoint in {args.checkpoints} is held")
    return "".join(f"; {note}" for note in notes)


def _key(given: str) -> PublicKey:
    text = given
    if not given.startswith("ed25519:") and Path(given).is_file():
        try:
            text = Path(given).read_text()
        except OSError as e:
            raise UserError(f"--key {given}: cannot read it: {e.strerror or e}") from None
    try:
        return parse_public(text)
    except ValueError as e:
        raise UserError(f"--key {e}") from None


def _anchored_head(path: Path, key: PublicKey | None) -> tuple[int, str] | str:
    """The last checkpoint the file holds, or why the file cannot be trusted."""
    from proxy.ops.anchor import AnchorFileError, read_anchored  # loads only for --checkpoints

    try:
        lines = read_anchored(path)
    except AnchorFileError as e:
        raise UserError(f"--checkpoints {e}") from None
    if key is not None:
        for line in lines:
            if not line.signed_by(key):
                return (
                    f"{path}:{line.line}: checkpoint {line.seq} was not signed by the key given: "
                    "the file was altered, or the key is another log's"
                )
    last = max(lines, key=lambda line: line.seq)
    return last.seq, last.hash


def given_key(args: argparse.Namespace) -> PublicKey | None:
    """The public key --key names, if it was given (UserError if it is not one)."""
    return _key(args.key) if args.key is not None else None
