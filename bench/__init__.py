"""`python -m bench` (`make bench`): the gateway against a bare bound and a naive baseline.

Every server runs in its own process on loopback and is loaded from another
process (`wrk`, or a small aiohttp client where wrk is missing) with AiFi's
example bodies; the events are counted on the real broker. See `bench.__main__`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from core.settings import AmqpSettings

ROOT: Final = Path(__file__).resolve().parent.parent
EXAMPLES: Final = ROOT / "examples"
RESULTS: Final = Path(__file__).resolve().parent / "results"
LOOPBACK: Final = "127.0.0.1"
DEFAULT_AMQP_URL: Final = AmqpSettings().urls[0]

# What the load posts, round robin: AiFi's example bodies to the paths AiFi calls.
ROUTES: Final[tuple[tuple[str, Path], ...]] = (
    ("/webhooks/aifi/entered", EXAMPLES / "entered.json"),
    ("/webhooks/aifi/left", EXAMPLES / "left.json"),
    ("/webhooks/aifi/tracking", EXAMPLES / "tracking.json"),
)
