"""Persistence: the shared tables and every named query (the only SQL in Corral)."""
