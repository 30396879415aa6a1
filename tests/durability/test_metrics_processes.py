"""Two server processes on one log with ``PROMETHEUS_MULTIPROC_DIR``: a scrape of either reports
what both did (as behind a load balancer with several workers)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.durability.server_process import Client, ServerProcess

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class SharedMetricsServer(ServerProcess):
    def __init__(self, tmp: Path, metrics_dir: Path) -> None:
        super().__init__(tmp)
        self.metrics_dir = metrics_dir

    def env(self) -> dict[str, str]:
        return {**super().env(), "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}


async def scrape(session: aiohttp.ClientSession, server: ServerProcess) -> Samples:
    async with session.get(f"{server.url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_a_scrape_of_either_process_sums_both(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    first = SharedMetricsServer(tmp_path, metrics_dir)
    second = SharedMetricsServer(tmp_path, metrics_dir)
    await first.start()
    try:
        await second.start()
        try:
            async with aiohttp.ClientSession() as session:
                one, two = Client(session, first.url), Client(session, second.url)
                done = await one.start_run("hello from the first process")
                assert await one.settle(done) == "completed"
                waiting = await one.start_run("/ask still there?")
                assert await one.settle(waiting) == "waiting_for_input"
                for _ in range(3):
                    async with session.get(f"{second.url}/healthz") as response:
                        assert response.status == 200

                # A stream held open on the second process.
                async with session.get(
                    f"{second.url}/v1/runs/{waiting}/events", headers=two.headers
                ) as stream:
                    assert await stream.content.readline() == b": ping\n"
                    for server in (first, second):
                        samples = await scrape(session, server)
                        assert value(samples, "runlog_sse_connections") == 1
                        healthz = {"route": "/healthz", "method": "GET", "status": "200"}
                        assert value(samples, "runlog_http_requests_total", **healthz) == 3
                        finished = {"status": "completed", "error_class": ""}
                        assert value(samples, "runlog_runs_finished_total", **finished) == 1
                        live = value(samples, "runlog_runs_live", status="waiting_for_input")
                        assert live == 1
                    head = value(await scrape(session, first), "runlog_log_head_position")
                    assert head == value(await scrape(session, second), "runlog_log_head_position")
                    assert head > 0

            # The second process stops: its open stream no longer counts.
            assert second.terminate() == 0
            async with aiohttp.ClientSession() as session:
                samples = await scrape(session, first)
            assert value(samples, "runlog_sse_connections") == 0
            healthz = {"route": "/healthz", "method": "GET", "status": "200"}
            assert value(samples, "runlog_http_requests_total", **healthz) == 3
        finally:
            if second.process is not None and second.process.poll() is None:
                second.kill()
    finally:
        with contextlib.suppress(Exception):
            first.terminate()
