"""Export and import streams in the bundle format (docs/bundle-format.md), the same files
``gems-tunedb export`` and ``gems-tunedb import`` read and write."""
from __future__ import annotations

import io
import tarfile
import zlib
from datetime import datetime, timezone
from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import Response

from tunerd import crud, schemas
from tunerd.deps import DatabaseDep, MetricsDep, ReadAuth, SettingsDep, WriteAuth
from tunerd.schemas import NO_CONTROL

router = APIRouter(tags=["bundles"])

BUNDLE_TYPE = "application/octet-stream"


@router.get("/export", dependencies=[ReadAuth], response_class=Response,
            responses={200: {"content": {BUNDLE_TYPE: {"schema": {"type": "string", "format": "binary"}}},
                             "description": "a tuning bundle"}})
def export(
    db: DatabaseDep,
    kernel: Annotated[Optional[str], Query(max_length=256, pattern=NO_CONTROL)] = None,
    env_id: Annotated[Optional[str], Query(max_length=64, pattern=r"^[0-9a-f]+$")] = None,
    device: Annotated[Optional[str], Query(min_length=1, max_length=256, pattern=NO_CONTROL,
                                           description="a device slug, part of the device name, or an env_id prefix")] = None,
):
    """A bundle of the records (with their timings) and misses matching the filters."""
    blob, _ = crud.export_bundle(db.engine, kernel=kernel, env_id=env_id, device=device)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Response(blob, media_type=BUNDLE_TYPE,
                    headers={"Content-Disposition": f'attachment; filename="tunerd-{stamp}.tdb"'})


INFLATE_FACTOR = 32  # a bundle may decompress to this many times the body limit


def _inflated_too_far(blob: bytes, cap: int) -> str | None:
    """Why the gzip members of a (tar) bundle would decompress past ``cap`` bytes in all,
    counted in bounded chunks without keeping the output: the bundle reader allows up to
    2 GiB per member, which a server must not inflate from a few MiB of request.
    ``None``: within the cap, or not readable as a tar (the bundle reader says why)."""
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tf:
            for m in tf:
                if not (m.isreg() and m.name.endswith(".gz")):
                    continue
                f = tf.extractfile(m)
                d = zlib.decompressobj(wbits=31)
                data = f.read() if f is not None else b""
                while data:
                    total += len(d.decompress(data, 1 << 20))
                    if total > cap:
                        return f"bundle: decompresses to more than {cap} bytes (this server's limit)"
                    data = d.unconsumed_tail
    except (tarfile.TarError, zlib.error, EOFError, OSError, ValueError):
        return None
    return None


async def _body(request: Request) -> bytes:
    # Read in the event loop (the size limit already applied); the sync route below runs
    # the database work in the threadpool.
    return await request.body()


@router.post("/import", response_model=schemas.ImportResponse, dependencies=[WriteAuth],
             openapi_extra={"requestBody": {"required": True, "content": {
                 BUNDLE_TYPE: {"schema": {"type": "string", "format": "binary"}}}}})
def import_(
    body: Annotated[bytes, Depends(_body)],
    db: DatabaseDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    policy: Annotated[Literal["faster", "newer", "keep", "replace"], Query()] = "faster",
):
    """Import a bundle in one transaction: the whole file is validated first (422 with the
    reason, nothing written), then its records are merged by ``policy`` with their
    timings, and its misses are merged (keys that have a record are left out)."""
    from tuner.bundle import BundleError, read_bundle_bytes

    too_far = _inflated_too_far(body, INFLATE_FACTOR * settings.max_body_bytes)
    if too_far is not None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, too_far)
    try:
        data = read_bundle_bytes(body, label="bundle")
        schemas.check_bundle(data)
    except (BundleError, ValueError) as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(e)) from e
    report = crud.import_bundle(db.engine, data, policy=policy)
    metrics.add("records_upserted", report.records)
    return report
