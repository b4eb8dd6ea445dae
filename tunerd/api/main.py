"""The ``/v1`` API router."""
from fastapi import APIRouter

from tunerd.api.routes import bundles, jobs, misses, records, stats

api_router = APIRouter()
api_router.include_router(records.router)
api_router.include_router(misses.router)
api_router.include_router(stats.router)
api_router.include_router(jobs.router)
api_router.include_router(bundles.router)
