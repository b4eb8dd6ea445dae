"""tunerd fixtures: a real uvicorn serving tunerd in a subprocess on 127.0.0.1 and a
random free port, on SQLite (a temp file) or PostgreSQL (a fresh schema per server)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.pg import fresh_schema_or_skip

TOKEN = "test-token-" + uuid.uuid4().hex
MAX_BODY = 256 * 1024
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``tunerd`` in a subprocess; ``stop()`` kills it (the client tests stop it mid-run)."""

    def __init__(self, db: str, tmp: Path, *, token: str | None = TOKEN, env: dict | None = None) -> None:
        self.db, self.tmp, self.token = db, tmp, token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "TUNERD_MAX_BODY_BYTES": str(MAX_BODY), **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log = tmp / f"tunerd-{self.port}.log"

    def start(self, timeout_s: float = 60.0) -> "Server":
        cmd = [sys.executable, "-m", "tunerd.main", "--db", self.db, "--port", str(self.port), "--log-level", "warning"]
        if self.token:
            tf = self.tmp / "token"
            tf.write_text(self.token + "\n")
            cmd += ["--token-file", str(tf)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tunerd exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"tunerd did not become ready in {timeout_s} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def client(self, *, auth: bool = True) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if auth and self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path_factory):
    """A fresh tuning DB URL on each backend, shared by the session's tests (each test
    uses its own kernel names, so none sees another's rows)."""
    if request.param == "sqlite":
        yield str(tmp_path_factory.mktemp("tunerd-sqlite") / "tuning.db")
        return
    with fresh_schema_or_skip("tunerd") as url:
        yield url


@pytest.fixture(scope="session")
def server(db_url, tmp_path_factory):
    srv = Server(db_url, tmp_path_factory.mktemp("tunerd")).start()
    try:
        yield srv
    finally:
        srv.stop()
