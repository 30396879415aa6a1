"""Anchors: what the hash chain cannot catch alone (a cut tail, a rewritten and re-hashed log)
is caught against a ``(position, hash)`` kept elsewhere: ``runlog head`` / ``verify --expect``,
and checkpoints signed with Ed25519 by the service (``verify --checkpoints``). And a log whose
tail was cut is refused at start-up, not written over."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from eventstore import canonical_bytes, chain_hash
from tests.conftest import ADMIN_KEY, Api
from tests.durability.disks import remount_read_only, small_disk
from tests.durability.test_audit import runlog

ROOT = Path(__file__).resolve().parents[2]


async def _some_runs(api: Api, count: int = 2) -> None:
    for i in range(count):
        _, run_id = await api.start_run(f"hello {i}")
        await api.wait_for(run_id)


def _rows(db: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT position, stream, seq, type, data, created_at, hash FROM events"
            " ORDER BY position"
        ).fetchall()
    finally:
        conn.close()


def _cut_tail(db: str, keep: int) -> None:
    """What someone with write access to the file can do: drop the triggers, delete rows."""
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER events_append_only_delete")
    conn.execute("DELETE FROM events WHERE position > ?", (keep,))
    conn.commit()
    conn.close()


def _rewrite_and_rehash(db: str, position: int, data: str) -> None:
    """Change one event and recompute every later hash: the chain verifies again."""
    rows = _rows(db)
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER events_append_only_update")
    previous = rows[position - 2][6] if position > 1 else None
    assert previous is not None
    for row in rows[position - 1 :]:
        pos, stream, seq, type_, old, created_at, _ = row
        new_data = data if pos == position else old
        digest = chain_hash(
            previous, canonical_bytes(pos, stream, seq, type_, new_data, created_at)
        )
        conn.execute(
            "UPDATE events SET data = ?, hash = ? WHERE position = ?", (new_data, digest, pos)
        )
        previous = digest
    conn.commit()
    conn.close()


async def test_head_prints_position_and_hash_and_expect_checks_it(api: Api, db_path: str) -> None:
    await _some_runs(api)
    head = runlog("head", "--db", db_path)
    assert head.returncode == 0, head.stderr
    position, hash_ = head.stdout.split()
    last = _rows(db_path)[-1]
    assert (int(position), hash_) == (last[0], last[6])
    middle = _rows(db_path)[3]
    ok = runlog(
        "verify", "--db", db_path, "--expect", f"{position}:{hash_}",
        "--expect", f"{middle[0]}:{middle[6]}",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout
    assert "holds all 2 anchors" in ok.stdout
    wrong = runlog("verify", "--db", db_path, "--expect", f"{middle[0]}:{'0' * 64}")
    assert wrong.returncode == 1
    assert f"ANCHOR FAILED at position {middle[0]}:" in wrong.stdout
    bad = runlog("verify", "--db", db_path, "--expect", "twelve")
    assert bad.returncode == 2
    assert "POSITION:HASH" in bad.stderr


async def test_a_cut_tail_passes_the_chain_but_not_the_anchor(api: Api, db_path: str) -> None:
    await _some_runs(api)
    position, hash_ = runlog("head", "--db", db_path).stdout.split()
    await api.client.close()
    _cut_tail(db_path, int(position) - 3)
    alone = runlog("verify", "--db", db_path)
    assert alone.returncode == 0, alone.stdout  # what a chain alone cannot see
    anchored = runlog("verify", "--db", db_path, "--expect", f"{position}:{hash_}")
    assert anchored.returncode == 1
    assert f"ANCHOR FAILED at position {position}: the log ends at position" in anchored.stdout


async def test_a_rehashed_log_passes_the_chain_but_not_the_anchor(api: Api, db_path: str) -> None:
    await _some_runs(api)
    position, hash_ = runlog("head", "--db", db_path).stdout.split()
    await api.client.close()
    target = next(r[0] for r in _rows(db_path) if r[3] == "message.added")
    _rewrite_and_rehash(db_path, target, json.dumps({"content": "I never said that"}))
    alone = runlog("verify", "--db", db_path)
    assert alone.returncode == 0, alone.stdout
    anchored = runlog("verify", "--db", db_path, "--expect", f"{position}:{hash_}")
    assert anchored.returncode == 1
    assert f"ANCHOR FAILED at position {position}: the log holds hash" in anchored.stdout


def _keys(tmp_path: Path) -> tuple[str, str]:
    key = Ed25519PrivateKey.generate()
    private = tmp_path / "checkpoint.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = tmp_path / "checkpoint.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(private), str(public)


async def test_signed_checkpoints_to_a_file_anchor_the_log(
    aiohttp_client: Any, make_app: Callable[..., web.Application], db_path: str, tmp_path: Path
) -> None:
    private, public = _keys(tmp_path)
    sink = tmp_path / "checkpoints.jsonl"
    client = await aiohttp_client(
        make_app(
            checkpoint_key_file=private,
            checkpoint_sink=f"file:{sink}",
            checkpoint_seconds=0.05,
        )
    )
    api = Api(client, ADMIN_KEY)
    await _some_runs(api, 3)
    await client.close()  # the head at shutdown is signed too
    lines = [json.loads(line) for line in sink.read_text().splitlines()]
    assert lines, "no checkpoint was written"
    assert lines[-1]["position"] == _rows(db_path)[-1][0]
    assert sorted({line["position"] for line in lines}) == [line["position"] for line in lines]
    ok = runlog("verify", "--db", db_path, "--checkpoints", str(sink), "--public-key", public)
    assert ok.returncode == 0, ok.stdout
    assert f"holds all {len(lines)} anchors" in ok.stdout

    # A checkpoint line someone edited no longer verifies against the public key.
    forged = tmp_path / "forged.jsonl"
    edited = dict(lines[0], hash="0" * 64)
    forged.write_text(json.dumps(edited) + "\n")
    refused = runlog(
        "verify", "--db", db_path, "--checkpoints", str(forged), "--public-key", public
    )
    assert refused.returncode == 1
    assert "line 1: the signature does not verify" in refused.stdout

    # Rewriting and re-hashing the log is caught at the first checkpoint after the change.
    target = next(r[0] for r in _rows(db_path) if r[3] == "message.added")
    _rewrite_and_rehash(db_path, target, json.dumps({"content": "forged"}))
    assert runlog("verify", "--db", db_path).returncode == 0
    caught = runlog("verify", "--db", db_path, "--checkpoints", str(sink), "--public-key", public)
    assert caught.returncode == 1
    first_after = min(line["position"] for line in lines if line["position"] >= target)
    assert f"ANCHOR FAILED at position {first_after}:" in caught.stdout


async def test_checkpoints_to_a_webhook_and_to_the_log_stream(
    aiohttp_client: Any,
    aiohttp_server: Any,
    make_app: Callable[..., web.Application],
    tmp_path: Path,
) -> None:
    private, _ = _keys(tmp_path)
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/anchors", hook)
    hook_server = await aiohttp_server(receiver)
    client = await aiohttp_client(
        make_app(
            checkpoint_key_file=private,
            checkpoint_sink=str(hook_server.make_url("/anchors")),
            checkpoint_seconds=3600,
        )
    )
    await _some_runs(Api(client, ADMIN_KEY), 1)
    await client.close()
    assert len(received) == 1  # at most every hour: only the one at shutdown
    assert set(received[0]) == {"position", "hash", "signed_at", "signature"}

    with structlog.testing.capture_logs() as logs:
        client = await aiohttp_client(
            make_app(checkpoint_key_file=private, checkpoint_sink="log", checkpoint_seconds=3600)
        )
        await _some_runs(Api(client, ADMIN_KEY), 1)
        await client.close()
    checkpoints = [entry for entry in logs if entry["event"] == "checkpoint"]
    assert len(checkpoints) == 1
    assert checkpoints[0]["position"] > received[0]["position"]


async def test_a_cut_tail_is_refused_at_start_up(api: Api, db_path: str) -> None:
    await _some_runs(api)
    await api.client.close()
    head = _rows(db_path)[-1][0]
    _cut_tail(db_path, head - 2)
    serve = runlog("serve", "--db", db_path, "--port", "0")
    assert serve.returncode == 2
    assert "Traceback" not in serve.stderr
    assert f"the log ends at position {head - 2}" in serve.stderr
    assert "events were removed from the log's end" in serve.stderr
    admin = runlog("admin", "--db", db_path, "create-org", "--name", "late")
    assert admin.returncode == 2
    assert len(_rows(db_path)) == head - 2  # nothing written over the cut positions


@pytest.mark.parametrize("command", [("verify",), ("rebuild", "--check")])
async def test_audit_commands_name_a_corrupted_event(
    api: Api, db_path: str, command: tuple[str, ...]
) -> None:
    await _some_runs(api)
    await api.client.close()
    target = next(r[0] for r in _rows(db_path) if r[3] == "run.started")
    conn = sqlite3.connect(db_path)
    conn.execute("DROP TRIGGER events_append_only_update")
    conn.execute("UPDATE events SET data = '{\"run_id\": 7' WHERE position = ?", (target,))
    conn.commit()
    conn.close()
    result = runlog(command[0], "--db", db_path, *command[1:])
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"FAILED at position {target}:" in result.stdout


async def test_audit_commands_read_a_read_only_copy_and_serve_refuses_it_in_one_line(
    api: Api, db_path: str, tmp_path: Path
) -> None:
    await _some_runs(api)
    await api.client.close()
    target = next(r[0] for r in _rows(db_path) if r[3] == "message.added")
    with small_disk(tmp_path / "media") as media:
        intact, damaged = media / "intact.db", media / "damaged.db"
        shutil.copy(db_path, intact)
        shutil.copy(db_path, damaged)
        conn = sqlite3.connect(damaged)
        conn.execute("DROP TRIGGER events_append_only_update")
        conn.execute("UPDATE events SET created_at = 'x' WHERE position = ?", (target,))
        conn.commit()
        conn.close()
        remount_read_only(media)
        for command in (("verify",), ("rebuild", "--check"), ("head",)):
            result = runlog(command[0], "--db", str(intact), *command[1:])
            assert result.returncode == 0, result.stdout + result.stderr
        result = runlog("verify", "--db", str(damaged))
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert f"FAILED at position {target}:" in result.stdout
        serve = runlog("serve", "--db", str(intact), "--port", "0")
        assert serve.returncode == 2
        assert serve.stderr.strip().count("\n") == 0, serve.stderr
        assert serve.stderr.startswith(f"error: cannot open the log at {intact} for writing")
        assert "readonly" in serve.stderr or "read-only" in serve.stderr
