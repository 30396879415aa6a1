"""Anchors: what the hash chain cannot prove alone (README.md, "For auditors").

A chain shows that no event was changed *relative to its successors*; whoever can write the file
can cut its tail, or rewrite an event and recompute every later hash, and the chain still
verifies. An anchor is a ``(position, hash)`` pair kept somewhere else: ``runlog head`` prints
one, ``runlog verify --expect POSITION:HASH`` checks the log still holds it. Signed checkpoints
make anchors automatic: the service signs its head with an Ed25519 key kept outside the database
at most every ``checkpoint_seconds`` and publishes each one to a sink (a file, a webhook, or the
log stream); ``runlog verify --checkpoints FILE --public-key KEY`` checks every one of them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import structlog

from eventstore import EventStore, RecordedEvent, VerifyReport, utc_now
from runs.config import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

# cryptography (its Rust library) and aiohttp's client are imported where keys are read and
# checkpoints sent: a service without a checkpoint key, and `runlog verify` without --anchors,
# never load them.

__all__ = [
    "Checkpoint",
    "CheckpointPublisher",
    "anchor_problems",
    "load_private_key",
    "load_public_key",
    "parse_expect",
    "read_checkpoints",
    "signed_message",
    "watching",
]

log = structlog.get_logger("runlog.checkpoint")


class Checkpoint(msgspec.Struct, frozen=True):
    """One signed anchor, one JSON line in a checkpoint file."""

    position: int
    hash: str
    signed_at: str
    signature: str  # base64 of Ed25519 over signed_message(position, hash)


def signed_message(position: int, hash_: str) -> bytes:
    """What a checkpoint's signature covers: the position and the hash, nothing else."""
    return f"runlog-checkpoint:v1:{position}:{hash_}".encode()


def parse_expect(text: str) -> tuple[int, str]:
    """``POSITION:HASH`` (``runlog head`` prints ``POSITION HASH``; either separator)."""
    position, _, hash_ = text.replace(" ", ":").partition(":")
    if not position.isdigit() or int(position) < 1 or len(hash_) != 64:
        raise ValueError(f"{text!r} is not POSITION:HASH (a position >= 1 and a sha256 hex hash)")
    return int(position), hash_.lower()


def watching(events: Iterable[RecordedEvent], seen: dict[int, str]) -> Iterator[RecordedEvent]:
    """Pass ``events`` through, noting the hash at each position ``seen`` asks for."""
    for event in events:
        if event.position in seen:
            seen[event.position] = event.hash
        yield event


def anchor_problems(
    report: VerifyReport, expected: Mapping[int, str], seen: Mapping[int, str]
) -> list[str]:
    """Each anchor the verified log does not hold, named by its position."""
    problems = []
    for position, hash_ in sorted(expected.items()):
        if position > report.head_position:
            if report.ok:
                problems.append(
                    f"position {position}: the log ends at position {report.head_position}"
                    f" (anchored hash {hash_}); events were removed from its end"
                )
            else:
                problems.append(f"position {position}: not reached by the verified chain")
        elif seen.get(position) != hash_:
            problems.append(
                f"position {position}: the log holds hash {seen.get(position)}, the anchor"
                f" says {hash_}; the log was rewritten up to or after this position"
            )
    return problems


# -- keys -------------------------------------------------------------------------------------


def load_private_key(path: str) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the checkpoint key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"the checkpoint key {path} is not an Ed25519 private key")
    return key


def load_public_key(path: str) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the public key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return key


_decoder = msgspec.json.Decoder(Checkpoint)


def read_checkpoints(path: str, key: Ed25519PublicKey) -> tuple[dict[int, str], list[str]]:
    """The anchors of a checkpoint file whose signatures verify, and a problem for each line
    that does not (named by its line number)."""
    from cryptography.exceptions import InvalidSignature

    anchors: dict[int, str] = {}
    problems: list[str] = []
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as exc:
        return {}, [f"cannot read {path}: {exc}"]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            checkpoint = _decoder.decode(line)
            key.verify(
                base64.b64decode(checkpoint.signature, validate=True),
                signed_message(checkpoint.position, checkpoint.hash),
            )
        except (msgspec.DecodeError, ValueError):
            problems.append(f"{path} line {number}: not a checkpoint")
            continue
        except InvalidSignature:
            problems.append(f"{path} line {number}: the signature does not verify")
            continue
        if anchors.get(checkpoint.position, checkpoint.hash) != checkpoint.hash:
            problems.append(
                f"{path} line {number}: two signed hashes for position {checkpoint.position}"
            )
        anchors[checkpoint.position] = checkpoint.hash
    return anchors, problems


# -- the service's publisher ------------------------------------------------------------------


class CheckpointPublisher:
    """Signs the log's head at most every ``interval_s`` seconds (when it moved) and at stop,
    and publishes each checkpoint to ``sink``: ``log`` (structlog), ``file:PATH`` (JSON
    lines, appended and synced) or an ``http(s)://`` URL (POSTed as JSON)."""

    def __init__(
        self, store: EventStore, key: Ed25519PrivateKey, sink: str, interval_s: float
    ) -> None:
        if not (sink == "log" or sink.startswith(("file:", "http://", "https://"))):
            raise ConfigError(
                f"checkpoint_sink {sink!r} must be 'log', 'file:PATH' or an http(s) URL"
            )
        self.store = store
        self.key = key
        self.sink = sink
        self.interval_s = interval_s
        self.last_position = -1
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="runlog-checkpoints")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.publish_head()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.publish_head()
            except Exception as exc:  # a sink that fails must not stop the next checkpoint
                log.error("checkpoint.failed", sink=self.sink, error=repr(exc))

    async def publish_head(self) -> Checkpoint | None:
        position = await self.store.head()
        if position in (self.last_position, 0):
            return None
        (head,) = await self.store.read_all(position - 1, 1)
        checkpoint = Checkpoint(
            position=head.position,
            hash=head.hash,
            signed_at=utc_now(),
            signature=base64.b64encode(
                self.key.sign(signed_message(head.position, head.hash))
            ).decode(),
        )
        # Marked as published before the send: a stop that cancels a send in flight (whose
        # file write finishes on its thread anyway) must not sign the same head again.
        previous, self.last_position = self.last_position, head.position
        try:
            await self._send(checkpoint)
        except Exception:
            self.last_position = previous  # the sink refused it: try again next time
            raise
        return checkpoint

    async def _send(self, checkpoint: Checkpoint) -> None:
        line = msgspec.json.encode(checkpoint)
        if self.sink == "log":
            log.info("checkpoint", **msgspec.structs.asdict(checkpoint))
        elif self.sink.startswith("file:"):
            await asyncio.to_thread(_append_line, self.sink[5:], line)
        else:
            import aiohttp

            timeout = aiohttp.ClientTimeout(total=10)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(
                    self.sink, data=line, headers={"Content-Type": "application/json"}
                ) as response,
            ):
                response.raise_for_status()


def _append_line(path: str, line: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
