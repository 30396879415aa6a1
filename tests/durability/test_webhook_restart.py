"""kill -9 the real server while deliveries are pending — one in flight at the receiver, one
waiting for its retry — and see both delivered after the restart under the same ids."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import aiohttp

from tests.durability.server_process import Client, ServerProcess
from tests.webhooks.receiver import Receiver, readme_verifier

verify = readme_verifier()


async def test_pending_deliveries_survive_sigkill_under_the_same_delivery_id(
    tmp_path: Path,
) -> None:
    held = Receiver([0])  # holds the first request open: the server dies mid-attempt
    failing = Receiver([500])  # the first attempt fails: the server dies before the retry
    await held.start()
    await failing.start()
    server = ServerProcess(
        tmp_path,
        "webhooks_allow_private = true\nwebhooks_timeout_seconds = 2\n"
        "webhooks_retry_base_seconds = 3\n",
    )
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(session, server.url)
            endpoints = {}
            for name, receiver in (("held", held), ("failing", failing)):
                status, endpoint = await client.call(
                    "POST",
                    "/v1/webhook-endpoints",
                    {"url": receiver.url, "events": ["run.completed"]},
                )
                assert status == 201, endpoint
                endpoints[name] = endpoint
            run_id = await client.start_run("hello")
            first_held = await held.next(timeout=30)
            first_failed = await failing.next(timeout=30)
            assert (first_held.status, first_failed.status) == (0, 500)
            # Kill once the failure is recorded (and its retry scheduled), not before.
            path = f"/v1/webhook-endpoints/{endpoints['failing']['id']}/deliveries"
            async with asyncio.timeout(30):
                while (await client.call("GET", path))[1][0]["last_response_code"] != 500:
                    await asyncio.sleep(0.02)
            server.kill()

            await server.start()
            again_held = await held.next(timeout=60)
            again_failed = await failing.next(timeout=60)
            for endpoint, before, after in (
                (endpoints["held"], first_held, again_held),
                (endpoints["failing"], first_failed, again_failed),
            ):
                assert after.status == 200
                assert after.headers["Runlog-Delivery"] == before.headers["Runlog-Delivery"]
                assert after.body == before.body
                assert json.loads(after.body)["run_id"] == run_id
                assert verify(endpoint["secret"], after.body, after.headers["Runlog-Signature"])
                status, rows = await client.call(
                    "GET", f"/v1/webhook-endpoints/{endpoint['id']}/deliveries"
                )
                assert status == 200
                (row,) = rows
                assert row["id"] == after.headers["Runlog-Delivery"]
                assert row["attempts"] == 2

            # SIGTERM with an attempt in flight: the service still stops cleanly, and the
            # attempt's outcome (here, the receiver's silence) is in the log.
            held.answers = [0]
            await client.start_run("one more")
            assert (await held.next(timeout=30)).status == 0
        assert server.terminate() == 0
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill()
        await held.stop()
        await failing.stop()

    conn = sqlite3.connect(server.db)
    try:
        first = [f"delivery-{r.headers['Runlog-Delivery']}" for r in (first_held, first_failed)]
        streams = conn.execute(
            "SELECT stream, group_concat(type, ' ') FROM events WHERE stream IN (?, ?)"
            " GROUP BY stream",
            first,
        ).fetchall()
        statuses = conn.execute(
            "SELECT status FROM webhook_deliveries WHERE delivery_id IN (?, ?)",
            [s.removeprefix("delivery-") for s in first],
        ).fetchall()
        cut = conn.execute(
            "SELECT status, last_error FROM webhook_deliveries WHERE endpoint_id = ?"
            " AND delivery_id NOT IN (?, ?)",
            [endpoints["held"]["id"], *(s.removeprefix("delivery-") for s in first)],
        ).fetchall()
    finally:
        conn.close()
    assert sorted(types for _, types in streams) == sorted(
        [
            # Mid-attempt: the claim lapsed, and the next process claimed attempt 2.
            "webhook.delivery_claimed webhook.delivery_claimed webhook.delivery_succeeded",
            # Failed, then retried after the restart when its retry fell due.
            "webhook.delivery_claimed webhook.delivery_attempt_failed"
            " webhook.delivery_claimed webhook.delivery_succeeded",
        ]
    )
    assert statuses == [("succeeded",), ("succeeded",)]
    assert cut == [("pending", "no answer within 2 s")]
    for command in (("verify",), ("rebuild", "--check")):
        result = server.cli(*command)
        assert result.returncode == 0, result.stdout + result.stderr
