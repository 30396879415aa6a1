"""Writes ``release-0.1.0.db``: a log made by runlog 0.1.0 (the first release's schema), kept so
that every later version is tested against opening it. Run once per release, from that
release's checkout: ``python -m tests.data.make_release_log tests/data/release-0.1.0.db``.

It holds an org with a second user, threads with messages, and runs that completed (one with a
tool call), failed, were cancelled, and one still waiting for input.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from runs.config import load_config
from server import create_app

KEY = "rl_release_fixture_key_0123456789abcdefghij"


async def make(path: str) -> None:
    config = load_config(
        None, env={}, overrides={"db": path, "delta_coalesce_ms": 0, "secret_key": "fixture"}
    )
    app = create_app(config, env={"RUNLOG_BOOTSTRAP_API_KEY": KEY})
    async with TestClient(TestServer(app)) as client:
        headers = {"Authorization": f"Bearer {KEY}"}

        async def post(url: str, body: object) -> dict[str, str]:
            async with client.post(url, json=body, headers=headers) as response:
                assert response.status in (200, 201), await response.text()
                return dict(await response.json())

        async def settle(run_id: str, wanted: set[str]) -> None:
            for _ in range(500):
                async with client.get(f"/v1/runs/{run_id}", headers=headers) as response:
                    if (await response.json())["status"] in wanted:
                        return
                await asyncio.sleep(0.02)
            raise AssertionError(run_id)

        for content, wanted in [
            ("hello from 0.1.0", {"completed"}),
            ('/tool calculator {"expression": "6*7"}', {"completed"}),
            ("/fail", {"failed"}),
            ("/slow 500\na slow reply that gets cancelled", {"running"}),
            ("/ask Which colour?", {"waiting_for_input"}),
        ]:
            thread = await post("/v1/threads", {"title": content[:20]})
            await post(f"/v1/threads/{thread['id']}/messages", {"content": content})
            run = await post(f"/v1/threads/{thread['id']}/runs", {})
            await settle(run["run_id"], wanted)
            if wanted == {"running"}:
                await post(f"/v1/runs/{run['run_id']}:cancel", {})


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.unlink(missing_ok=True)
    asyncio.run(make(str(target)))
    print(f"wrote {target}")
