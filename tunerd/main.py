"""tunerd: the cluster-wide tuning DB service.

    tunerd --db postgresql+psycopg://user@host/db --host 127.0.0.1 --port 8600 --token-file F

Serves the tuning DB (SQLite by default, PostgreSQL for clusters) under ``/v1`` with
OpenAPI docs at ``/docs``. The schema is migrated with Alembic at start under a lock; a DB
of a newer schema is refused.
"""
from __future__ import annotations

import argparse
import logging
import sys

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, OperationalError

from tunerd.api.main import api_router
from tunerd.api.routes import health
from tunerd.core.config import ConfigError, Settings, is_loopback, read_token_file
from tunerd.core.db import Database
from tunerd.metrics import Metrics
from tunerd.middleware import BodyLimitMiddleware, MetricsMiddleware

log = logging.getLogger(__name__)

API_VERSION = "v1"


def create_app(settings: Settings | None = None, *, database: Database | None = None) -> FastAPI:
    """The tunerd app on ``settings.db`` (opened and migrated now: ``TuningDBError`` on a
    DB this version cannot serve)."""
    settings = settings or Settings.from_env()
    db = database or Database(settings.db)
    metrics = Metrics()
    app = FastAPI(
        title="tunerd",
        version="0.1.0",
        description="The cluster-wide flag_gems tuning database.",
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.db = db
    app.state.metrics = metrics
    app.include_router(api_router, prefix=f"/{API_VERSION}")
    app.include_router(health.router)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # Without the offending input: it may be huge, or not JSON-encodable (NaN).
        errors = [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(OperationalError)
    async def _db_down(request: Request, exc: OperationalError):
        if _refused_value(exc):
            return await _db_refused(request, exc)
        log.error("database error on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": "database unavailable"}, status_code=503)

    @app.exception_handler(DataError)
    async def _db_refused(request: Request, exc: DBAPIError):
        # A value the validation let through but the database refuses: the client's input,
        # not an outage (a 503 would make clients retry the same request forever).
        log.warning("database refused a value on %s %s: %s", request.method, request.url.path, exc.orig)
        return JSONResponse({"detail": "the database refused a value of this request"}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    # Outermost first: metrics see every answer, including 413s.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _refused_value(exc: DBAPIError) -> bool:
    """PostgreSQL's "program limit exceeded" (SQLSTATE class 54, e.g. an index row too
    large) is reported as an OperationalError, but is caused by the request's values."""
    return str(getattr(exc.orig, "sqlstate", "") or "").startswith("54")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunerd", description="Serve the flag_gems tuning DB over HTTP.")
    p.add_argument("--db", help="SQLAlchemy URL or SQLite path (default: TUNERD_DB, else the local tuning DB)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8600)")
    p.add_argument("--token-file", help="file holding the bearer token required for writes")
    p.add_argument("--auth-reads", action="store_true", default=None, help="require the token for reads too")
    p.add_argument("--insecure", action="store_true",
                   help="allow binding a non-loopback address without a token")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        token = read_token_file(args.token_file) if args.token_file else None
        settings = settings.override(db=args.db, host=args.host, port=args.port, token=token,
                                     auth_reads=args.auth_reads, log_level=args.log_level)
    except ConfigError as e:
        print(f"tunerd: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.token is None:
        if not is_loopback(settings.host) and not args.insecure:
            print(f"tunerd: refusing to bind {settings.host} without a token (--token-file, or --insecure)",
                  file=sys.stderr)
            return 2
        log.warning("no token configured: writes are open to anyone who can reach %s", settings.host)
    from tuner.store.db import TuningDBError

    try:
        app = create_app(settings)
    except TuningDBError as e:
        print(f"tunerd: {e}", file=sys.stderr)
        return 2
    import uvicorn

    log.info("serving %s on http://%s:%d", app.state.db.name, settings.host, settings.port)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False)
    app.state.db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
