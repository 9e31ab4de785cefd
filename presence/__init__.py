"""`aifi-presence`: the presence ledger, read-only, as a JSON HTTP API for downstream services.

It reads the ledger the built-in workers keep (`ledger`, on SQLite or PostgreSQL)
and never writes to it; its bearer tokens are its own (`presence.tokens`).
"""
