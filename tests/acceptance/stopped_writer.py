"""A writer that stops itself (SIGSTOP) between writing its history row and
committing, for the MariaDB lost-row test (tests/acceptance/test_events.py).

    python -m tests.acceptance.stopped_writer URL BOARD REASON

It forces BOARD into maintenance with REASON. Once its history row is
written, with its id taken, and only the commit is left, it prints
``{"written": ID}`` and stops; the test sends SIGCONT when it wants. It then
prints ``{"committed": ID}``, or ``{"refused": "Error: message"}`` when the
commit failed and the event was refused, as a caller would have been told.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from sqlalchemy import select

from corral.engine.core import Engine
from corral.errors import CorralError
from corral.logs import configure_logging
from corral.machines import MachineSet, load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store import open_store
from corral.store.mysql import MysqlTx
from corral.store.schema import history_counter


def _stop_after_numbering() -> None:
    number = MysqlTx.number_history

    def numbered_then_stopped(tx: MysqlTx) -> None:
        if not tx.unnumbered:
            return
        number(tx)
        taken = tx.conn.execute(select(history_counter.c.last_id)).scalar_one()
        print(json.dumps({"written": taken}), flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)

    MysqlTx.number_history = numbered_then_stopped  # type: ignore[method-assign]


def main() -> None:
    url, board, reason = sys.argv[1:4]
    configure_logging("warning", "json")
    engine = Engine(open_store(url), MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)))
    _stop_after_numbering()
    try:
        engine.force_state("board", board, "maintenance", actor="stopped", reason=reason)
    except CorralError as exc:
        print(json.dumps({"refused": f"{type(exc).__name__}: {exc}"}), flush=True)
    else:
        [entry] = [e for e in engine.history("board", board, limit=5) if e.reason == reason]
        print(json.dumps({"committed": entry.id}), flush=True)
    finally:
        engine.close()
        engine.store.dispose()


if __name__ == "__main__":
    main()
