"""Alembic env: migrations run on a connection handed in by ``tuner.store.migrate``
(under its lock), or, from the ``alembic`` command line, on the URL given as
``-x url=...`` (else ``sqlalchemy.url`` of the ini file)."""
from alembic import context
from sqlalchemy import create_engine, pool

from tuner.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def cli_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database URL: run alembic with -x url=... (e.g. -x url=sqlite:////path/to/tuning.db)")
    return url


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    engine = create_engine(cli_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            run_migrations(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    context.configure(url=cli_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_online()
