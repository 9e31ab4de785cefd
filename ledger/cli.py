"""`aifi-ledger`: read the presence ledger, print JSON.

    aifi-ledger occupancy [--store ID]
    aifi-ledger visit SESSION_ID
    aifi-ledger tracking UNIQUE_EVENT_ID

The ledger is the one the settings name (`ledger.url`, `AIFI_LEDGER_URL`; else the SQLite
file `ledger.db`, `AIFI_LEDGER_DB`), or `--url URL`, or the SQLite file `--db PATH`. A visit
or tracking row that does not exist prints `null` and exits 1; a ledger that does not
exist exits 2, and is not created.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from core.settings import ConsumerProcessSettings, LedgerSettings, SettingsError, describe, load_as
from ledger.errors import LedgerError
from ledger.ledger import Ledger, opened


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aifi-ledger",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", type=Path, help="SQLite ledger file (default: the settings')")
    where.add_argument("--url", help="ledger URL, postgresql://... (default: the settings')")
    commands = parser.add_subparsers(dest="command", required=True)
    occupancy = commands.add_parser("occupancy", help="people inside, per store")
    occupancy.add_argument("--store", type=int, help="only this storeId")
    commands.add_parser("visit", help="one session's visit").add_argument("session_id")
    commands.add_parser("tracking", help="one tracking match").add_argument("unique_event_id")
    return parser


async def query(ledger: Ledger, args: argparse.Namespace) -> Any:
    if args.command == "visit":
        return await ledger.visit(args.session_id)
    if args.command == "tracking":
        return await ledger.tracking(args.unique_event_id)
    stores = await ledger.occupancy(args.store)
    if args.store is not None:
        return (
            stores[0]
            if stores
            else {"storeId": args.store, "occupancy": 0, "openSessions": 0, "sessions": 0}
        )
    return {"occupancy": sum(s["occupancy"] for s in stores), "stores": stores}


def ledger_settings(db: Path | None, url: str | None) -> LedgerSettings:
    settings = load_as(ConsumerProcessSettings).ledger
    if db is not None:
        return settings.model_copy(update={"url": "", "db": db})
    if url is None:
        return settings
    try:
        return LedgerSettings.model_validate(settings.model_dump() | {"url": url})
    except ValidationError as exc:
        raise SettingsError(describe(exc).replace("url:", "--url:")) from None


async def read(settings: LedgerSettings, args: argparse.Namespace) -> Any:
    # Reading must not create an empty ledger where a mistyped path or URL points.
    async with opened(settings, create=False) as ledger:
        return await query(ledger, args)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        settings = ledger_settings(args.db, args.url)
        result = asyncio.run(read(settings, args))
    except (SettingsError, LedgerError) as exc:
        print(f"aifi-ledger: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    if result is None:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
