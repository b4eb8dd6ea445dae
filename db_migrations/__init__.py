"""Alembic environment for the one tuning-DB schema (SQLite and PostgreSQL)."""
from pathlib import Path

SCRIPT_LOCATION = str(Path(__file__).resolve().parent)

# The newest revision in versions/: a DB already there opens without importing Alembic
# (tests check it against Alembic's own head).
HEAD = "0002"
