"""Corral: a persistent state machine engine for hardware test labs.

Every board, pool and job is a database-backed state machine. Nothing about a
machine lives in process memory between events, so any Corral process may be
killed at any moment and the lab carries on.
"""

__version__ = "0.1.0"
