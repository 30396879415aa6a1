"""What only the PostgreSQL backend has to prove: the database refuses UPDATE, DELETE and
TRUNCATE on ``events``, the log is the same table an auditor reads with ``psql``, and the
head row the writers serialise on stays equal to the last event."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import psycopg
import pytest

from eventstore import NewEvent, PostgresEventStore, StorageError, canonical_bytes, chain_hash
from tests.postgres import fresh_schema


@pytest.fixture
async def pg_store(pg_url: str) -> PostgresEventStore:
    store = await PostgresEventStore.open(fresh_schema(pg_url))
    await store.append("s", [NewEvent("A", b'{"n":1}'), NewEvent("B", b'{"n":2}')], 0)
    return store


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET data = '{}' WHERE position = 1",
        "DELETE FROM events WHERE position = 2",
        "TRUNCATE events",
        "INSERT INTO events VALUES (1, 's', 9, 'X', '{}', 'now', 'h')"
        " ON CONFLICT (position) DO UPDATE SET data = excluded.data",
    ],
    ids=["update", "delete", "truncate", "upsert"],
)
async def test_changes_to_events_are_refused_by_the_database(
    pg_store: PostgresEventStore, statement: str
) -> None:
    before = await pg_store.read_all()
    try:
        with (
            psycopg.connect(pg_store.url, autocommit=True) as conn,
            pytest.raises(psycopg.errors.RaiseException, match="append-only"),
        ):
            conn.execute(statement)
        assert await pg_store.read_all() == before
        assert (await pg_store.verify()).ok
    finally:
        await pg_store.close()


async def test_an_auditor_reads_the_log_with_plain_sql(pg_store: PostgresEventStore) -> None:
    try:
        with psycopg.connect(pg_store.url) as conn:
            rows = conn.execute(
                "SELECT position, stream, seq, type, data, created_at, hash FROM events"
                " ORDER BY position"
            ).fetchall()
            head = conn.execute("SELECT position, hash FROM events_head").fetchone()
            types = dict(
                conn.execute(
                    "SELECT column_name, data_type FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = 'events'"
                ).fetchall()
            )
        assert [r[4] for r in rows] == ['{"n":1}', '{"n":2}']  # the JSON text as hashed
        previous = "0" * 64
        for row in rows:
            previous_check = chain_hash(previous, canonical_bytes(*row[:6]))
            assert row[6] == previous_check
            previous = row[6]
        assert head == (2, rows[-1][6])
        assert types == {
            "position": "bigint",
            "stream": "text",
            "seq": "bigint",
            "type": "text",
            "data": "text",
            "created_at": "text",
            "hash": "text",
        }
    finally:
        await pg_store.close()


async def test_appends_notify_the_new_head_on_commit(pg_store: PostgresEventStore) -> None:
    try:
        with psycopg.connect(pg_store.url, autocommit=True) as listener:
            listener.execute("LISTEN runlog_events")
            [event] = await pg_store.append("s", [NewEvent("C", msgspec.json.encode({}))], 2)
            notes = list(listener.notifies(timeout=5, stop_after=1))
        assert [(n.channel, n.payload) for n in notes] == [("runlog_events", str(event.position))]
    finally:
        await pg_store.close()


async def test_an_unreachable_server_is_a_storage_error(tmp_path: Path) -> None:
    from eventstore import StorageError

    with pytest.raises(StorageError, match="PostgreSQL"):
        await PostgresEventStore.open("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")


async def test_the_store_recovers_when_its_connections_are_killed(
    pg_store: PostgresEventStore,
) -> None:
    """A server restart or an administrator's pg_terminate_backend: the appends and reads in
    flight fail with an error (so nothing is acknowledged that was not written), later ones
    work on new connections, and the log stays whole."""
    from eventstore import StorageError

    try:
        with psycopg.connect(pg_store.url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend'"
            ).fetchall()
        assert killed
        acknowledged = []
        for i in range(3):
            try:
                acknowledged += await pg_store.append("after", [NewEvent("T", b"{}")])
            except StorageError:
                assert i == 0, "only the first append after the kill may fail"
        for _ in range(3):
            try:
                log = await pg_store.read_all()
                break
            except StorageError:
                continue
        assert [e.position for e in log] == list(range(1, len(log) + 1))
        assert {e.position for e in acknowledged} <= {e.position for e in log}
        assert len(acknowledged) >= 2
        assert (await pg_store.verify()).ok
    finally:
        await pg_store.close()


async def test_a_lost_connection_is_storage_unavailable_until_a_probe_succeeds(
    pg_store: PostgresEventStore,
) -> None:
    """The append that meets a terminated connection fails as "cannot write now" (so runs
    retry it and /readyz says why), and a probe on a new connection clears the fault."""
    from eventstore import StorageUnavailable

    try:
        assert await pg_store.check_writable() is None
        with psycopg.connect(pg_store.url, autocommit=True) as admin:
            # The timeout makes the call wait until the backends are gone.
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend'"
            ).fetchall()
        assert killed
        assert all(row[0] for row in killed)
        with pytest.raises(StorageUnavailable):
            await pg_store.append("after", [NewEvent("T", b"{}")])
        assert pg_store.write_fault is not None
        assert await pg_store.check_writable() is None
        assert pg_store.write_fault is None
        recorded = await pg_store.append("after", [NewEvent("T", b"{}")])
        assert recorded[0].position == 3
    finally:
        await pg_store.close()


def test_projection_ddl_gets_postgresql_types_even_after_a_comment() -> None:
    from eventstore.postgres import portable_ddl

    ddl = """
    -- a comment first, as projections write them
    CREATE TABLE IF NOT EXISTS t (
        id TEXT PRIMARY KEY, n INTEGER NOT NULL, x REAL, y TEXT COLLATE "C"
    )"""
    assert " ".join(portable_ddl(ddl).split()) == (
        'CREATE TABLE IF NOT EXISTS t ( id TEXT COLLATE "C" PRIMARY KEY, n BIGINT NOT NULL,'
        ' x DOUBLE PRECISION, y TEXT COLLATE "C" )'
    )
    index = "CREATE INDEX IF NOT EXISTS t_by_n ON t (n)"
    assert portable_ddl(index) == index


async def test_a_row_the_database_refuses_fails_only_its_own_append(pg_url: str) -> None:
    # PostgreSQL's text cannot hold NUL, so this append is refused by the database itself,
    # after the batch's rows were sent (with the commit): the batch is redone item by item.
    store = await PostgresEventStore.open(fresh_schema(pg_url))
    try:
        results = await asyncio.gather(
            store.append("a", [NewEvent("T", b'{"n":1}')], 0),
            store.append("b", [NewEvent("T", b'"\x00"')], 0),
            store.append("c", [NewEvent("T", b'{"n":3}')], 0),
            return_exceptions=True,
        )
        assert isinstance(results[1], StorageError)
        assert [r[0].position for r in (results[0], results[2])] == [1, 2]  # type: ignore[index]
        assert await store.read_stream("b") == []
        again = await store.append("d", [NewEvent("T", b"{}")], 0)
        assert again[0].position == 3
        assert (await store.verify()).ok
    finally:
        await store.close()
