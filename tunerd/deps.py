"""FastAPI dependencies: the database sessions, the settings and the bearer-token checks."""
from __future__ import annotations

import hmac
from typing import Annotated, Iterator

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from tunerd.core.config import Settings
from tunerd.core.db import Database
from tunerd.metrics import Metrics

_bearer = HTTPBearer(auto_error=False, description="The token given to tunerd with --token-file or TUNERD_TOKEN")


# The cheap dependencies are ``async``: a sync one costs a threadpool hop per request
# (about a millisecond each on a small machine); only the sessions do blocking work.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_database(request: Request) -> Database:
    return request.app.state.db


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def read_session(db: DatabaseDep) -> Iterator[Session]:
    with db.read() as s:
        yield s


def write_session(db: DatabaseDep) -> Iterator[Session]:
    """One transaction under the writer lock, committed when the route returns."""
    with db.write() as s:
        yield s


# scope="function": the transaction is committed (and the writer lock released) before the
# response is sent, so a client that got 200 can read its own write.
ReadSession = Annotated[Session, Depends(read_session, scope="function")]
WriteSession = Annotated[Session, Depends(write_session, scope="function")]


def _check_token(settings: Settings, creds: HTTPAuthorizationCredentials | None) -> None:
    expected = settings.token
    if expected is None:
        return
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    if not hmac.compare_digest(creds.credentials.encode(), expected.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid token")


async def require_write(settings: SettingsDep,
                        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    _check_token(settings, creds)


async def require_read(settings: SettingsDep,
                       creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    if settings.auth_reads:
        _check_token(settings, creds)


WriteAuth = Depends(require_write)
ReadAuth = Depends(require_read)
