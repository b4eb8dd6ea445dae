"""Alembic environment for the one tuning-DB schema (SQLite and PostgreSQL)."""
from pathlib import Path

SCRIPT_LOCATION = str(Path(__file__).resolve().parent)
