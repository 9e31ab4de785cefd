"""Example handlers for downstream teams."""
