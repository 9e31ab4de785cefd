"""`/metrics` in Prometheus text format, counting what really happened."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.support.broker import Capture
from tests.support.gateway import AUTH

Client = TestClient[web.Request, web.Application]


async def scrape(client: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_requests_latency_quarantine_and_relay_are_counted(
    client: Client, capture: Capture, examples: dict[str, bytes]
) -> None:
    for _ in range(2):
        await client.post("/webhooks/aifi/entered", data=examples["entered"], headers=AUTH)
    await client.post("/webhooks/aifi/tracking", data=b"{not json", headers=AUTH)
    for _ in range(3):
        await capture.get()
    samples = await scrape(client)
    assert samples[("aifi_requests_total", (("kind", "entered"), ("status", "200")))] == 2
    assert samples[("aifi_requests_total", (("kind", "tracking"), ("status", "400")))] == 1
    assert samples[("aifi_ack_latency_seconds_count", (("kind", "entered"),))] == 2
    assert samples[("aifi_quarantined_total", (("kind", "tracking"),))] == 1
    assert samples[("aifi_relay_confirms_total", ())] == 3
    assert samples[("aifi_broker_connected", ())] == 1
    assert samples[("aifi_gateway_ready", ())] == 1
    assert samples[("aifi_spool_depth", ())] == 0


async def test_unauthorized_requests_are_counted_too(
    client: Client, examples: dict[str, bytes]
) -> None:
    await client.post("/webhooks/aifi/entered", data=examples["entered"])
    samples = await scrape(client)
    assert samples[("aifi_requests_total", (("kind", "entered"), ("status", "401")))] == 1
