"""tunerd's start-up checks and options, in-process (no server needed)."""
from __future__ import annotations

import sqlalchemy as sa
from fastapi.testclient import TestClient

from tunerd.core.config import Settings
from tunerd.main import create_app, main

FP = {"vendor": "v", "device_name": "d", "compute_capability": "", "sm_count": 1, "triton_version": "t",
      "torch_version": "t"}
LOOKUP = {"kernel": "k", "kernel_hash": "h", "fingerprint": FP, "keys": ["[1]"]}


def test_refuses_a_newer_schema(tmp_path, capsys):
    db = tmp_path / "t.db"
    create_app(Settings(db=str(db))).state.db.close()
    eng = sa.create_engine(f"sqlite:///{db}")
    with eng.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'"))
    eng.dispose()
    assert main(["--db", str(db), "--port", "0"]) == 2
    assert "newer" in capsys.readouterr().err


def test_refuses_a_public_address_without_a_token(tmp_path, capsys):
    assert main(["--db", str(tmp_path / "t.db"), "--host", "0.0.0.0"]) == 2
    assert "without a token" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert main(["--db", str(tmp_path / "t.db"), "--token-file", str(empty)]) == 2


def test_auth_reads(tmp_path):
    c = TestClient(create_app(Settings(db=str(tmp_path / "t.db"), token="s3cret", auth_reads=True)))
    assert c.post("/v1/records/lookup", json=LOOKUP).status_code == 401
    assert c.get("/v1/stats", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert c.post("/v1/records/lookup", json=LOOKUP, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/healthz").status_code == 200  # probes stay open


def test_batch_limit(tmp_path):
    c = TestClient(create_app(Settings(db=str(tmp_path / "t.db"), max_batch=2)))
    assert c.post("/v1/records/lookup", json={**LOOKUP, "keys": ["[1]", "[2]", "[3]"]}).status_code == 422
    assert c.post("/v1/records/lookup", json={**LOOKUP, "keys": ["[1]", "[2]"]}).status_code == 200
