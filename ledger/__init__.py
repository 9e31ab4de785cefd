"""The presence ledger: which people are in which store, on SQLite or PostgreSQL.

The built-in workers write it (`consumers` adapts it to their handler type), the presence
API and `aifi-ledger` read it; it depends on `core` only.
"""
