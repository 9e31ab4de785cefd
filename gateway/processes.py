"""Gateway processes: `serve` runs one; with `http.processes: N`, a `Supervisor` runs N of
them sharing the port through SO_REUSEPORT.

The supervisor is lean: `python -m gateway` checks the settings, then becomes (exec) this
module's `main`, which imports neither pydantic nor the application; each process it forks
loads the settings and the application for itself. Forking, unlike spawning, starts no
resource tracker process either. `make bench` measured the peak RSS of two processes and
their supervisor at 2.0 times one process's, against 3.1 times when a supervisor holding
the whole application spawned them.

Each gateway process has its own spool directory (`<spool.dir>/worker-<i>`: the name
predates this module and is kept, so that an upgrade recovers the spools already on disk)
and its own AMQP connection, so nothing is shared but the listening port. The supervisor
only supervises: it restarts a process that died (which recovers its own spool) and passes
SIGTERM on for a graceful stop. A gateway process dies with its supervisor, so that a
supervisor killed with SIGKILL leaves no process holding a spool that its successor must
recover.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Final, NoReturn

from core import logs

if TYPE_CHECKING:
    from aiohttp import web

    from core.settings import GatewayProcessSettings

# Named: run as `python -m gateway.processes`, this module is `__main__`.
log = logging.getLogger("gateway.processes")

RESTART_DELAY_S: Final = 0.5
# An orphaned gateway process stops gracefully, and is killed if that takes longer: the spool
# is a write-ahead log, so the next supervisor recovers it either way.
ORPHAN_DEADLINE_S: Final = 2.0
LINGERING_S: Final = 1.0
GC_THRESHOLDS: Final = (20_000, 20, 20)
PR_SET_PDEATHSIG: Final = 1  # <linux/prctl.h>
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


def quiet_gc() -> None:
    """Fewer and shorter collections: under load they paused the loop for tens of ms.

    What is alive at start (modules, pydantic's schemas) is frozen out of every
    collection, and the young generation is collected every GC_THRESHOLDS[0]
    allocations instead of 700. `make bench` measured p99 25-31 ms against
    42-58 ms without, at the same throughput and peak RSS.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def serve(settings: GatewayProcessSettings) -> None:
    """One gateway process; with `http.processes` > 1 they share the port (SO_REUSEPORT)."""
    from core import tracing
    from gateway.app import create_app

    logs.configure(settings.log.level)
    # Entered before the app: its spans are flushed once the app has stopped.
    with tracing.configured(settings.tracing, "aifi-gateway") as tracer:
        app = create_app(settings, tracer)
        quiet_gc()
        run(app, settings)


def run(app: web.Application, settings: GatewayProcessSettings) -> None:
    """Serve `app` until a signal stops it."""
    import uvloop
    from aiohttp import web

    web.run_app(
        app,
        host=settings.http.host,
        port=settings.http.port,
        access_log=logging.getLogger("aiohttp.access") if settings.http.access_log else None,
        shutdown_timeout=settings.http.shutdown_timeout_s,
        # aiohttp closes a connection that has not delivered a complete request
        # head within the keep-alive timeout: that is our header timeout.
        keepalive_timeout=settings.http.header_timeout_s,
        # After refusing a body, drain what the client still sends for a moment
        # (so it can read the answer), not for aiohttp's default 10 s.
        lingering_time=LINGERING_S,
        print=None,
        loop=uvloop.new_event_loop(),
        reuse_port=settings.http.processes > 1 or None,
    )


def process_settings(settings: GatewayProcessSettings, index: int) -> GatewayProcessSettings:
    """The settings of gateway process `index`: its own spool directory."""
    spool = settings.spool.model_copy(update={"dir": settings.spool.dir / f"worker-{index}"})
    return settings.model_copy(update={"spool": spool})


def run_process(index: int, supervisor_pid: int) -> None:
    """Gateway process `index`, forked by the supervisor, whose signal handlers are not its own."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    # Blocked by the supervisor around the fork: one that came meanwhile acts now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    die_with_parent(supervisor_pid)
    from core.settings import GatewayProcessSettings, read

    # The same environment and working directory as the supervisor's: the same settings,
    # whose deprecation warnings the supervisor has logged already.
    settings, _ = read(GatewayProcessSettings, os.environ)
    serve(process_settings(settings, index))


def die_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when its parent exits, and SIGKILL it ORPHAN_DEADLINE_S later."""
    armed = set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent_pid:  # it exited before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)
    watch = threading.Thread(target=watch_parent, args=(armed,), name="orphan-watch", daemon=True)
    watch.start()


def set_parent_death_signal(signum: int) -> bool:
    """prctl(PR_SET_PDEATHSIG): the kernel signals us when our parent exits (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0)


def watch_parent(signalled: bool) -> None:
    """Wait for the parent's end: multiprocessing's pipe from it reads EOF once it exited
    (which also covers a parent gone before prctl and systems without prctl)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    multiprocessing.connection.wait([parent.sentinel])
    if not signalled:
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_DEADLINE_S)
    log.error("the graceful stop of an orphaned gateway process overran; killing it")
    os.kill(os.getpid(), signal.SIGKILL)


class Supervisor:
    """Runs `count` gateway processes, restarts one that dies, stops them on SIGTERM."""

    def __init__(self, count: int, shutdown_timeout_s: float) -> None:
        self._count = count
        self._shutdown_timeout_s = shutdown_timeout_s
        # Fork, not spawn: the supervisor has no thread and no event loop to copy, and
        # spawn would start a resource tracker process and re-import this one's modules.
        self._context = multiprocessing.get_context("fork")
        self._processes: dict[int, BaseProcess] = {}
        self._stopping = False

    def start(self, index: int) -> None:
        process = self._context.Process(
            target=run_process, args=(index, os.getpid()), name=f"aifi-gateway-{index}"
        )
        # Until the child has its own handlers, a stop signal must not run the supervisor's.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        self._processes[index] = process
        # Not "process": a LogRecord's own attribute (the pid), which `extra` may not replace.
        log.info("gateway process started", extra={"process_index": index, "pid": process.pid})

    def run(self) -> int:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._stop)
        for index in range(self._count):
            self.start(index)
        while not self._stopping:
            self._restart_dead()
            time.sleep(RESTART_DELAY_S)
        return self._join()

    def _restart_dead(self) -> None:
        for index, process in list(self._processes.items()):
            if not process.is_alive() and not self._stopping:
                log.error(
                    "gateway process died; restarting it",
                    extra={"process_index": index, "exitcode": process.exitcode},
                )
                self.start(index)

    def _stop(self, signum: int, frame: object) -> None:
        self._stopping = True
        for process in self._processes.values():
            if process.pid is not None and process.is_alive():
                process.terminate()

    def _join(self) -> int:
        timeout_s = self._shutdown_timeout_s + 5
        for process in self._processes.values():
            process.join(timeout_s)
        # -SIGTERM: a gateway process stopped while still starting, before it could accept anything.
        clean = (0, -signal.SIGTERM)
        return 0 if all(p.exitcode in clean for p in self._processes.values()) else 1


def become_supervisor(settings: GatewayProcessSettings) -> NoReturn:
    """Replace this process (same pid) by a fresh supervisor: what checking the settings
    loaded (pydantic, YAML) would otherwise stay in its memory for nothing."""
    argv = [sys.executable, "-m", "gateway.processes", str(settings.http.processes)]
    argv += [str(settings.http.shutdown_timeout_s), settings.log.level]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def main(argv: list[str]) -> int:
    """`python -m gateway.processes COUNT SHUTDOWN_TIMEOUT_S LOG_LEVEL`: the supervisor."""
    count, shutdown_timeout_s, level = argv
    logs.configure(level)
    return Supervisor(int(count), float(shutdown_timeout_s)).run()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
