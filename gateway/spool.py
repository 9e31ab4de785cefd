"""A durable local spool: a write-ahead log of outbound messages in segment files.

Each record is `<length u32><crc32 u32>` then a payload of `<seq u64><meta length
u32><meta JSON><body>`; the checksum covers the payload, so a record torn by a
crash mid-write is recognized and everything before it is kept. Appends go to a
fresh segment after every start, so a torn tail is never written after.
What the relay confirmed is recorded as a watermark (every seq at or below it
is confirmed), overwritten in place after every confirm; segments entirely below it
are deleted. When an appended record counts
as durable is the spool's `spool.fsync` policy (`gateway.fsync`), asked by `durable`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from core.contract import Outbound
from gateway import fsync
from gateway.fsync import FsyncMode

log = logging.getLogger(__name__)

FRAME: Final = struct.Struct("<II")
PREFIX: Final = struct.Struct("<QI")
SUFFIX: Final = ".seg"
WATERMARK_FILE: Final = "confirmed"
WATERMARK_BYTES: Final = 30
LOCK_FILE: Final = "lock"
UNPUBLISHABLE_DIR: Final = "unpublishable"


class SpoolLocked(Exception):
    """Another process holds the spool directory."""


class SpoolFull(Exception):
    """Appending would exceed `spool.max_bytes`."""


class SpoolPoisoned(OSError):
    """An fsync of the spool failed: nothing appended is durable any more until a restart.

    After a failed fsync the kernel may have dropped the pages it covered and report
    success to the next one (PostgreSQL's "fsyncgate"), so the spool never syncs again
    to call them safe: it refuses every append until the gateway restarts on it.
    """


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    outbound: Outbound


@dataclass(frozen=True, slots=True)
class SpoolStats:
    depth: int
    bytes: int
    segments: int
    oldest_age_s: float | None


@dataclass(slots=True)
class Segment:
    path: Path
    first_seq: int
    last_seq: int
    size_bytes: int


def encode(seq: int, outbound: Outbound) -> bytes:
    meta = orjson.dumps(
        [
            outbound.message_id,
            outbound.routing_key,
            outbound.content_type,
            outbound.timestamp_s,
            outbound.headers,
        ]
    )
    payload = PREFIX.pack(seq, len(meta)) + meta + outbound.body
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode(payload: bytes) -> Record:
    seq, meta_len = PREFIX.unpack_from(payload)
    start = PREFIX.size
    message_id, key, content_type, ts, headers = orjson.loads(payload[start : start + meta_len])
    body = payload[start + meta_len :]
    return Record(seq, Outbound(message_id, key, body, content_type, ts, headers))


def payloads(path: Path) -> Iterator[bytes]:
    """The intact record payloads of a segment, read as a stream, stopping with a warning
    at a torn one."""
    with path.open("rb") as segment:
        offset = 0
        while frame := segment.read(FRAME.size):
            length, crc = FRAME.unpack(frame) if len(frame) == FRAME.size else (0, None)
            payload = segment.read(length)
            if crc is None or len(payload) < length or zlib.crc32(payload) != crc:
                warn_torn(path, offset)
                return
            yield payload
            offset += FRAME.size + length


def seq_of(payload: bytes) -> int:
    seq: int = PREFIX.unpack_from(payload)[0]
    return seq


def read_segment(path: Path, first_seq: int = 0) -> Iterator[Record]:
    """The intact records of a segment from `first_seq` on (only those are decoded)."""
    return (decode(p) for p in payloads(path) if seq_of(p) >= first_seq)


def warn_torn(path: Path, offset: int) -> None:
    log.warning("torn record skipped", extra={"segment": path.name, "offset": offset})


def segment_paths(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SUFFIX}"))


def make_dir_durably(directory: Path) -> None:
    """mkdir -p, each directory made also fsyncing its parent: a power cut keeps it."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    for made in reversed(missing):
        fsync_dir(made.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def watermark_text(watermark: int) -> bytes:
    """A fixed-width line (`<20 digits> <crc32 hex>`): each save overwrites the last whole."""
    digits = b"%020d" % watermark
    return b"%s %08x\n" % (digits, zlib.crc32(digits))


def parse_watermark(text: bytes) -> int:
    """The watermark a file holds; 0 (replay all that is on disk) if it is torn."""
    if len(text) != WATERMARK_BYTES:
        return int(text)  # as written before the fixed-width line; ValueError if torn
    digits, crc = text[:20], text[21:29]
    if text[20:21] != b" " or int(crc, 16) != zlib.crc32(digits):
        raise ValueError("watermark checksum mismatch")
    return int(digits)


def read_watermark(directory: Path) -> int:
    try:
        return parse_watermark((directory / WATERMARK_FILE).read_bytes())
    except (FileNotFoundError, ValueError):
        return 0


class Spool:
    """The segment files of one spool directory; appended to by one process only."""

    def __init__(
        self,
        directory: Path,
        segment_bytes: int,
        max_bytes: int,
        fsync_mode: FsyncMode = "always",
        fsync_interval_s: float = 0.05,
    ) -> None:
        self.directory = directory
        self._segment_bytes = segment_bytes
        self._max_bytes = max_bytes
        self._segments: deque[Segment] = deque()
        self._fd: int | None = None
        self._next_seq = 1
        self._unconfirmed: deque[tuple[int, int]] = deque()  # (seq, timestamp_s)
        self._confirmed: set[int] = set()
        self.watermark = 0
        self._saved_watermark = 0
        self._watermark_fd: int | None = None
        self._lock_fd: int | None = None
        self._bytes = 0
        self._sync_thread = fsync.SyncThread()
        self._durability = fsync.policy(fsync_mode, self._sync, fsync_interval_s)
        # What the last successful sync covered: records up to `_synced_seq`, the active
        # segment up to `_synced_bytes`.
        self._synced_seq = 0
        self._synced_bytes = 0
        # `always` answers 503 for every record after a failed sync: forget them all.
        self._forget_unsynced = fsync_mode == "always"
        self.poisoned: str | None = None

    def recover(self) -> list[Record]:
        """Open the spool; return what was spooled and not confirmed, oldest first."""
        make_dir_durably(self.directory)
        self._lock()
        self.watermark = self._saved_watermark = read_watermark(self.directory)
        pending: list[Record] = []
        for path in segment_paths(self.directory):
            records = list(read_segment(path))
            if not records:
                path.unlink()
                continue
            self._adopt(path, records)
            pending.extend(r for r in records if r.seq > self.watermark)
        self._next_seq = max(self._next_seq, self.watermark + 1)
        self._synced_seq = self._next_seq - 1
        self._open_watermark()
        for record in pending:
            self._unconfirmed.append((record.seq, record.outbound.timestamp_s))
        self._delete_confirmed_segments()
        return pending

    def _lock(self) -> None:
        self._lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise SpoolLocked(f"{self.directory} is in use by another gateway process") from None

    def _adopt(self, path: Path, records: list[Record]) -> None:
        first, last = records[0].seq, records[-1].seq
        size = path.stat().st_size
        self._segments.append(Segment(path, first, last, size))
        self._bytes += size
        self._next_seq = max(self._next_seq, last + 1)

    def append(self, outbound: Outbound) -> Record:
        """Write one record (not yet durable: see `durable`)."""
        if self.poisoned is not None:
            raise SpoolPoisoned(self.poisoned)
        seq = self._next_seq
        frame = encode(seq, outbound)
        if self.size_bytes + len(frame) > self._max_bytes:
            raise SpoolFull(f"spool holds {self.size_bytes} bytes of {self._max_bytes}")
        segment = self._writable(seq, len(frame))
        self._write(segment, frame)
        segment.last_seq = seq
        self._next_seq = seq + 1
        self._unconfirmed.append((seq, outbound.timestamp_s))
        return Record(seq, outbound)

    async def durable(self) -> None:
        """Return once every record appended before the call is as durable as `spool.fsync`
        says; raise OSError if the disk failed it."""
        await self._durability.durable()

    async def _sync(self) -> None:
        """fdatasync the segment appended to now: the policy calls it after the appends it
        covers, and a rotation in between has already fsynced the segment it sealed."""
        if self.poisoned is not None:
            raise SpoolPoisoned(self.poisoned)
        seq, size = self.last_seq, self._segments[-1].size_bytes if self._fd is not None else 0
        try:
            await self._sync_thread.fdatasync(self._fd)
        except OSError as exc:
            self._poison(f"fsync failed: {exc}")
            raise
        if seq > self._synced_seq:  # a rotation meanwhile has synced more
            self._synced_seq, self._synced_bytes = seq, size

    def _write(self, segment: Segment, frame: bytes) -> None:
        assert self._fd is not None
        try:
            written = os.write(self._fd, frame)
        except OSError:
            self._seal(truncate_to=segment.size_bytes)
            raise
        if written != len(frame):
            self._seal(truncate_to=segment.size_bytes)
            raise OSError(f"short write to {segment.path.name}")
        segment.size_bytes += written
        self._bytes += written

    def _writable(self, seq: int, frame_bytes: int) -> Segment:
        active = self._segments[-1] if self._fd is not None else None
        if active is not None and active.size_bytes + frame_bytes <= self._segment_bytes:
            return active
        if active is not None:
            self._seal()
            if self.poisoned is not None:
                raise SpoolPoisoned(self.poisoned)
        return self._open_segment(seq)

    def _open_segment(self, seq: int) -> Segment:
        path = self.directory / f"{seq:020d}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fsync_dir(self.directory)
        except OSError as exc:
            os.close(fd)
            self._poison(f"fsync of the spool directory failed: {exc}")
            raise
        self._fd, self._synced_bytes = fd, 0
        segment = Segment(path, seq, seq - 1, 0)
        self._segments.append(segment)
        return segment

    def _seal(self, truncate_to: int | None = None) -> None:
        """Close the active segment durably; the next append opens a new one."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if truncate_to is not None:
                os.ftruncate(fd, truncate_to)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            self._poison(f"fsync of a sealed segment failed: {exc}")
            return
        os.close(fd)
        self._synced_seq, self._synced_bytes = self._segments[-1].last_seq, 0

    def _poison(self, reason: str) -> None:
        """Refuse every append from now on; with `always`, forget what was not synced."""
        if self.poisoned is not None:
            return
        self.poisoned = reason
        log.error(
            "spool poisoned: refusing events until the gateway restarts",
            extra={"reason": reason, "durable_seq": self._synced_seq},
        )
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        if self._forget_unsynced:
            self._forget_after(self._synced_seq, self._synced_bytes)

    def _forget_after(self, seq: int, size_bytes: int) -> None:
        """Drop the records after `seq`, each answered 503: none may be published, now or
        after a restart (cut off the segment, and passed by the watermark)."""
        while self._unconfirmed and self._unconfirmed[-1][0] > seq:
            self._unconfirmed.pop()
        segment = self._segments[-1] if self._segments else None
        if segment is not None and segment.last_seq > seq:
            try:
                with open(segment.path, "r+b") as cut:
                    cut.truncate(size_bytes)
                    os.fsync(cut.fileno())
            except OSError as exc:
                log.error("cutting off refused records failed", extra={"error": repr(exc)})
            self._bytes -= segment.size_bytes - size_bytes
            segment.size_bytes, segment.last_seq = size_bytes, seq
        self.watermark = self._unconfirmed[0][0] - 1 if self._unconfirmed else self.last_seq

    def confirm(self, seq: int) -> None:
        """Record the broker's confirm of `seq`; advance the watermark over every confirmed seq."""
        self._confirmed.add(seq)
        while self._unconfirmed and self._unconfirmed[0][0] in self._confirmed:
            self._confirmed.discard(self._unconfirmed.popleft()[0])
        self.watermark = self._unconfirmed[0][0] - 1 if self._unconfirmed else self._next_seq - 1
        self._delete_confirmed_segments()

    def _delete_confirmed_segments(self) -> None:
        while self._segments and self._segments[0].last_seq <= self.watermark:
            if self._fd is not None and len(self._segments) == 1:
                return
            segment = self._segments.popleft()
            self._bytes -= segment.size_bytes
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()

    @property
    def last_seq(self) -> int:
        """The seq of the last record appended (0 before the first)."""
        return self._next_seq - 1

    def read_from(self, first_seq: int, max_bytes: int) -> list[Record]:
        """Records from `first_seq` on, oldest first, until about `max_bytes` of bodies."""
        found: list[Record] = []
        size = 0
        for segment in self._segments:
            if segment.last_seq < first_seq:
                continue
            for record in read_segment(segment.path, first_seq):
                found.append(record)
                size += len(record.outbound.body)
                if size >= max_bytes:
                    return found
        return found

    def set_aside(self, record: Record) -> Path:
        """Copy a record that can never be published to `unpublishable/`, durably."""
        aside = self.directory / UNPUBLISHABLE_DIR
        aside.mkdir(exist_ok=True)
        path = aside / f"{record.seq:020d}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, encode(record.seq, record.outbound))
            os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def _open_watermark(self) -> None:
        """Hold the watermark file open: every save is then one pwrite of the whole line
        over the last (which, once written, needs no new block, even on a full disk)."""
        path = self.directory / WATERMARK_FILE
        self._watermark_fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)

    def save_watermark(self) -> None:
        """Persist the watermark: one pwrite of a few bytes into the page cache, cheap enough
        after every confirm, so a killed process replays only what was in flight. Not
        fsynced: after a power cut a stale (or torn, hence 0) one only causes duplicates,
        and so does a save that fails (logged; the next one tries again)."""
        if self.watermark == self._saved_watermark or self._watermark_fd is None:
            return
        try:
            os.pwrite(self._watermark_fd, watermark_text(self.watermark), 0)
        except OSError as exc:
            log.warning("saving the watermark failed", extra={"error": repr(exc)})
            return
        self._saved_watermark = self.watermark

    def close(self) -> None:
        self._durability.close()
        self._sync_thread.close()
        self._seal()
        self.save_watermark()
        if self._watermark_fd is not None:
            os.close(self._watermark_fd)
            self._watermark_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def depth(self) -> int:
        return len(self._unconfirmed)

    def stats(self) -> SpoolStats:
        oldest = self._unconfirmed[0][1] if self._unconfirmed else None
        return SpoolStats(
            depth=self.depth,
            bytes=self.size_bytes,
            segments=len(self._segments),
            oldest_age_s=None if oldest is None else max(0.0, time.time() - oldest),
        )


def inspect(directory: Path) -> dict[str, Any]:
    """What `recover` would find, without opening the spool for writing."""
    watermark = read_watermark(directory)
    segments, pending, oldest = [], 0, None
    for path in segment_paths(directory):
        records = list(read_segment(path, watermark + 1))
        pending += len(records)
        if records and oldest is None:
            oldest = records[0].outbound.timestamp_s
        segments.append({"name": path.name, "bytes": path.stat().st_size, "pending": len(records)})
    return {
        "directory": str(directory),
        "depth": pending,
        "oldest_age_s": None if oldest is None else max(0.0, time.time() - oldest),
        "watermark": watermark,
        "segments": segments,
        "unpublishable": len(list((directory / UNPUBLISHABLE_DIR).glob(f"*{SUFFIX}"))),
    }
