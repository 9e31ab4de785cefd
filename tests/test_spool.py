"""The spool on real files: round trip, recovery, torn records, watermark, rotation, limits."""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path

import pytest

from core.contract import Outbound
from gateway import spool as spool_module
from gateway.spool import Spool, SpoolFull, SpoolLocked, segment_paths


def outbound(n: int, size: int = 100) -> Outbound:
    return Outbound(
        f"id-{n}",
        f"entered.{n % 3}",
        b"x" * size,
        "application/json",
        1_700_000_000 + n,
        {"h": n, "none": None},
    )


def spool_at(path: Path, segment_bytes: int = 1 << 20, max_bytes: int = 1 << 24) -> Spool:
    spool = Spool(path, segment_bytes, max_bytes)
    spool.recover()
    return spool


def test_unconfirmed_records_come_back_in_order_and_intact(tmp_path: Path) -> None:
    spool = spool_at(tmp_path)
    written = [spool.append(outbound(n)) for n in range(5)]
    spool.confirm(written[0].seq)
    spool.confirm(written[2].seq)
    spool.close()
    recovered = Spool(tmp_path, 1 << 20, 1 << 24).recover()
    # seq 3 was confirmed out of order: the watermark only covers seq 1, so 3 comes back too.
    assert [r.outbound for r in recovered] == [outbound(n) for n in (1, 2, 3, 4)]


def test_torn_last_record_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = spool_at(tmp_path)
    for n in range(3):
        spool.append(outbound(n))
    spool.close()
    segment = segment_paths(tmp_path)[0]
    os.truncate(segment, segment.stat().st_size - 7)  # a crash in the middle of the last write
    with caplog.at_level(logging.WARNING):
        recovered = Spool(tmp_path, 1 << 20, 1 << 24).recover()
    assert [r.outbound.message_id for r in recovered] == ["id-0", "id-1"]
    assert any(r.getMessage() == "torn record skipped" for r in caplog.records)


def test_corrupted_record_is_detected_by_its_checksum(tmp_path: Path) -> None:
    spool = spool_at(tmp_path)
    for n in range(3):
        spool.append(outbound(n))
    spool.close()
    segment = segment_paths(tmp_path)[0]
    data = bytearray(segment.read_bytes())
    data[-5] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert [r.outbound.message_id for r in Spool(tmp_path, 1 << 20, 1 << 24).recover()] == [
        "id-0",
        "id-1",
    ]


def test_appends_after_a_restart_go_to_a_new_segment_with_later_seqs(tmp_path: Path) -> None:
    first = spool_at(tmp_path)
    old = first.append(outbound(0))
    first.close()
    second = spool_at(tmp_path)
    new = second.append(outbound(1))
    second.close()
    assert new.seq > old.seq
    assert len(segment_paths(tmp_path)) == 2


def test_segments_rotate_and_confirmed_ones_are_deleted(tmp_path: Path) -> None:
    spool = spool_at(tmp_path, segment_bytes=1000)
    records = [spool.append(outbound(n, size=300)) for n in range(10)]
    assert len(segment_paths(tmp_path)) >= 4
    for record in records[:-1]:
        spool.confirm(record.seq)
    assert len(segment_paths(tmp_path)) == 1
    assert spool.depth == 1


def crash_after_confirming_two(directory: Path) -> None:
    spool = spool_at(directory)
    records = [spool.append(outbound(n)) for n in range(4)]
    for record in records[:2]:
        spool.confirm(record.seq)
    spool.save_watermark()
    os._exit(0)  # a crash: no close(), no final save, no cleanup at all


def test_watermark_survives_a_crash(tmp_path: Path) -> None:
    child = multiprocessing.get_context("fork").Process(
        target=crash_after_confirming_two, args=(tmp_path,)
    )
    child.start()
    child.join(10)
    recovered = Spool(tmp_path, 1 << 20, 1 << 24).recover()
    assert [r.outbound.message_id for r in recovered] == ["id-2", "id-3"]


def test_a_torn_watermark_reads_as_0_and_an_old_plain_one_is_read(tmp_path: Path) -> None:
    spool = spool_at(tmp_path)
    spool.confirm(spool.append(outbound(0)).seq)
    spool.save_watermark()
    saved = (tmp_path / spool_module.WATERMARK_FILE).read_bytes()
    assert spool_module.parse_watermark(saved) == 1
    # A digit changed under its checksum (a torn write): replay all, never skip any.
    torn = saved.replace(b"1 ", b"7 ", 1)
    (tmp_path / spool_module.WATERMARK_FILE).write_bytes(torn)
    assert spool_module.read_watermark(tmp_path) == 0
    (tmp_path / spool_module.WATERMARK_FILE).write_text("41")
    assert spool_module.read_watermark(tmp_path) == 41


def test_full_spool_refuses_appends(tmp_path: Path) -> None:
    spool = spool_at(tmp_path, max_bytes=1000)
    spool.append(outbound(0, size=400))
    with pytest.raises(SpoolFull):
        spool.append(outbound(1, size=700))
    assert spool.depth == 1


def test_a_second_process_cannot_open_the_same_spool(tmp_path: Path) -> None:
    spool_at(tmp_path)
    with pytest.raises(SpoolLocked):
        Spool(tmp_path, 1 << 20, 1 << 24).recover()


def test_inspect_reports_depth_and_segments_read_only(tmp_path: Path) -> None:
    spool = spool_at(tmp_path)
    records = [spool.append(outbound(n)) for n in range(3)]
    spool.confirm(records[0].seq)
    spool.save_watermark()
    report = spool_module.inspect(tmp_path)
    assert report["depth"] == 2
    assert report["watermark"] == records[0].seq
    assert [s["pending"] for s in report["segments"]] == [2]
    assert report["oldest_age_s"] is not None


def test_stats_follow_appends_and_confirms(tmp_path: Path) -> None:
    spool = spool_at(tmp_path)
    records = [spool.append(outbound(n)) for n in range(3)]
    assert spool.stats().depth == 3
    for record in records:
        spool.confirm(record.seq)
    assert spool.stats().depth == 0
    assert spool.stats().oldest_age_s is None
