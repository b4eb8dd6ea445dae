"""Counts of what the DB holds."""
from __future__ import annotations

from fastapi import APIRouter

from tunerd import crud, schemas
from tunerd.deps import DatabaseDep, ReadAuth, ReadSession

router = APIRouter(tags=["stats"])


@router.get("/stats", response_model=schemas.Stats, dependencies=[ReadAuth])
def stats(session: ReadSession, db: DatabaseDep):
    return schemas.Stats(**crud.stats(session), database=db.dialect)
