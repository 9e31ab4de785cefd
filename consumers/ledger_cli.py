"""`aifi-ledger`: read the presence ledger, print JSON.

    aifi-ledger occupancy [--store ID]
    aifi-ledger visit SESSION_ID
    aifi-ledger tracking UNIQUE_EVENT_ID

The database is `ledger.db` from the settings (`AIFI_LEDGER_DB`), or `--db PATH`. A visit or
tracking row that does not exist prints `null` and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from consumers.ledger import LedgerDB
from core.settings import LedgerSettings, SettingsError, load


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aifi-ledger",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--db", type=Path, help="ledger database (default: ledger.db setting)")
    commands = parser.add_subparsers(dest="command", required=True)
    occupancy = commands.add_parser("occupancy", help="people inside, per store")
    occupancy.add_argument("--store", type=int, help="only this storeId")
    commands.add_parser("visit", help="one session's visit").add_argument("session_id")
    commands.add_parser("tracking", help="one tracking match").add_argument("unique_event_id")
    return parser


def query(db: LedgerDB, args: argparse.Namespace) -> Any:
    if args.command == "visit":
        return db.visit(args.session_id)
    if args.command == "tracking":
        return db.tracking(args.unique_event_id)
    stores = db.occupancy(args.store)
    if args.store is not None:
        return (
            stores[0]
            if stores
            else {"storeId": args.store, "occupancy": 0, "openSessions": 0, "sessions": 0}
        )
    return {"occupancy": sum(s["occupancy"] for s in stores), "stores": stores}


def ledger_settings(db: Path | None) -> LedgerSettings:
    settings = load().ledger
    path = db or settings.db
    # Reading must not create an empty ledger where a mistyped path points.
    if not path.exists():
        raise SettingsError(f"no ledger database at {path}")
    return settings.model_copy(update={"db": path})


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        settings = ledger_settings(args.db)
    except SettingsError as exc:
        print(f"aifi-ledger: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    db = LedgerDB.open(settings)
    try:
        result = query(db, args)
    finally:
        db.close()
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    if result is None:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
