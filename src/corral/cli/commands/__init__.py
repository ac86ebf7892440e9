"""The ``corral`` commands, one module per domain.

Each module that owns commands has ``register(root)``, which adds them to the
root group of :mod:`corral.cli.main`; :mod:`.machines` holds the commands
every machine kind shares, which the board, pool and job modules add to their
groups. At the top a module imports only what ``corral --help`` loads anyway
(click, rich, the CLI's helpers, settings and errors); the engine, the store and
everything else a command needs is imported inside the command, so that the
CLI starts fast and read commands run without SQLAlchemy.
"""
