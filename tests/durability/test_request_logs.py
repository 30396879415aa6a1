"""A malformed request is one structured log line, without the header values it carried (an
over-long ``Authorization`` header is an API key): the real server, as a subprocess."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.durability.server_process import ServerProcess

SECRET = "rl_this_key_must_never_reach_the_log_0123456789"


async def _send(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


async def test_malformed_requests_log_one_line_without_header_values(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    await server.start()
    try:
        long_header = f"Authorization: Bearer {SECRET}{'x' * 10_000}\r\n"
        answer = await _send(
            server.port, f"GET /v1/threads HTTP/1.1\r\nHost: x\r\n{long_header}\r\n".encode()
        )
        assert answer.split(b"\r\n")[0].split()[1] == b"400", answer[:200]
        answer = await _send(
            server.port, f"GET / HTTP/1.1\r\nHost: x\r\n{SECRET} no colon\r\n\r\n".encode()
        )
        assert answer.split(b"\r\n")[0].split()[1] == b"400", answer[:200]
    finally:
        server.terminate()
    log = server.log.read_text()
    assert SECRET not in log
    assert "Traceback" not in log
    malformed = [json.loads(line) for line in log.splitlines() if '"request.malformed"' in line]
    assert len(malformed) == 2, log[-3000:]
    assert {entry["status"] for entry in malformed} == {400}
