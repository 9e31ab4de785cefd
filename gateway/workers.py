"""`http.workers: N`: N gateway processes sharing the port through SO_REUSEPORT.

Each worker has its own spool directory (`<spool.dir>/worker-<i>`) and its own
AMQP connection, so nothing is shared but the listening port. The parent only
supervises: it restarts a worker that died (which recovers its own spool) and
passes SIGTERM on for a graceful stop.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Final

from gateway.settings import Settings

log = logging.getLogger(__name__)

RESTART_DELAY_S: Final = 0.5
Serve = Callable[[Settings], None]


def worker_settings(settings: Settings, index: int) -> Settings:
    spool = settings.spool.model_copy(update={"dir": settings.spool.dir / f"worker-{index}"})
    return settings.model_copy(update={"spool": spool})


class Supervisor:
    def __init__(self, settings: Settings, serve: Serve) -> None:
        self._settings, self._serve = settings, serve
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, BaseProcess] = {}
        self._stopping = False

    def start(self, index: int) -> None:
        process = self._context.Process(
            target=self._serve,
            args=(worker_settings(self._settings, index),),
            name=f"aifi-gateway-worker-{index}",
        )
        process.start()
        self._workers[index] = process
        log.info("worker started", extra={"worker": index, "pid": process.pid})

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for index in range(self._settings.http.workers):
            self.start(index)
        while not self._stopping:
            self._restart_dead()
            time.sleep(RESTART_DELAY_S)
        return self._join()

    def _restart_dead(self) -> None:
        for index, process in list(self._workers.items()):
            if not process.is_alive() and not self._stopping:
                log.error(
                    "worker died; restarting it",
                    extra={"worker": index, "exitcode": process.exitcode},
                )
                self.start(index)

    def _stop(self, signum: int, frame: object) -> None:
        self._stopping = True
        for process in self._workers.values():
            if process.pid is not None and process.is_alive():
                process.terminate()

    def _join(self) -> int:
        timeout_s = self._settings.http.shutdown_timeout_s + 5
        for process in self._workers.values():
            process.join(timeout_s)
        # -SIGTERM: a worker stopped while still starting, before it could accept anything.
        clean = (0, -signal.SIGTERM)
        return 0 if all(p.exitcode in clean for p in self._workers.values()) else 1
