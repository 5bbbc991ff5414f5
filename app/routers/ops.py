"""Health, model information, metrics and the demo page."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter()
STATIC = Path(__file__).resolve().parent.parent / "static"


DRAINING = 503  # not ready: a readiness probe or a balancer's check sends no more streams here


@router.get(
    "/health",
    responses={DRAINING: {"description": 'Shutting down ("status": "draining"): not ready'}},
)
async def health(request: Request, response: Response) -> dict:
    services = request.app.state.services
    body = {
        "status": "ok",
        "model": services.bundle.card.get("name", "spikeear"),
        "active_streams": len(services.scheduler.sessions),
    }
    if services.streams.shutting_down:
        response.status_code = DRAINING
        body["status"] = "draining"
    return body


@router.get("/v1/models")
async def models(request: Request) -> dict:
    bundle = request.app.state.services.bundle
    card = bundle.card
    return {
        "models": [
            {
                "name": card.get("name", "spikeear"),
                "vocabulary": list(bundle.vocabulary),
                "custom_words": list(request.app.state.services.words.words.names),
                "sample_rate": bundle.frontend.sample_rate,
                "input_channels": bundle.frontend.channels,
                "bin_ms": bundle.bin_ms,
                "network": bundle.network.config.to_dict(),
                "parameters": bundle.network.parameter_count(),
                "evaluation": card.get("evaluation", {}),
                "card": card,
            }
        ]
    }


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text exposition format"}},
)
async def metrics(request: Request) -> PlainTextResponse:
    """Prometheus metrics: streams, latency, errors, limit hits (all worker processes)."""
    metrics = request.app.state.services.metrics
    return PlainTextResponse(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def demo_page() -> FileResponse:
    return FileResponse(STATIC / "index.html")
