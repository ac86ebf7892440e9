"""Where Corral finds the files that live beside the package.

``statemachines/`` and ``alembic/`` sit at the top of a Corral checkout; an
install made with ``pip install -e`` (what ``make run`` does) finds them there.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATEMACHINES_DIR = PROJECT_ROOT / "statemachines"
ALEMBIC_DIR = PROJECT_ROOT / "alembic"
SECOND_STAGE_DIR = PROJECT_ROOT / "examples" / "second-stage"
