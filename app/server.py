"""The FastAPI application: ``create_app(settings)`` wires one recognizer into every router."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from app.access import KEY_HEADERS, AccessControl
from app.limits import SlotCounter
from app.metrics import Metrics
from app.routers import batch, ops, stream, vosk, words
from app.routers.ops import STATIC
from app.scheduler import StreamScheduler
from app.schemas import websocket_components
from app.settings import Settings
from app.shutdown import OpenStreams
from app.words import WordSet
from models.model_file import ModelBundle, load_model
from models.recognizer import Recognizer

DEFAULT_BATCH_THREADS = 4  # upload threads per process when --max-batch-jobs is 0 (no limit)


@dataclass
class Services:
    settings: Settings
    bundle: ModelBundle
    scheduler: StreamScheduler
    metrics: Metrics
    stream_slots: SlotCounter  # open streams (--max-streams)
    batch_slots: SlotCounter  # running uploads (--max-batch-jobs)
    # Uploads run in their own threads: in asyncio's default pool, shared with the
    # streams' cochlea calls, 20 long uploads delayed a live stream's final by ~40 s.
    batch_pool: ThreadPoolExecutor
    words: WordSet  # custom words, shared by every endpoint
    streams: OpenStreams = field(default_factory=OpenStreams)  # what a shutdown must close


UPLOAD_NICENESS = 19  # the lowest priority: uploads run on what live streams leave


def _yield_to_live_streams() -> None:
    """Lower the calling upload thread's CPU priority (Linux schedules threads by their
    own niceness): on a machine whose cores uploads would fill, live streams keep their
    latency and uploads take longer, as a batch job should."""
    with contextlib.suppress(AttributeError, OSError):  # no per-thread priority here
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), UPLOAD_NICENESS)


def create_app(settings: Settings | None = None, bundle: ModelBundle | None = None) -> FastAPI:
    settings = settings or Settings()
    bundle = bundle or load_model(settings.model_path)
    metrics = Metrics()
    recognizer = Recognizer(bundle)
    custom_words = WordSet(recognizer, settings.words_path)  # checks the file before serving
    scheduler = StreamScheduler(
        recognizer,
        on_latency=metrics.partial_latency.observe,
        on_batch=metrics.observe_batch,
    )
    shared = Path(settings.shared_dir) if settings.shared_dir else None
    services = Services(
        settings,
        bundle,
        scheduler,
        metrics,
        stream_slots=SlotCounter(settings.max_streams, shared and shared / "streams.json"),
        batch_slots=SlotCounter(settings.max_batch_jobs, shared and shared / "uploads.json"),
        batch_pool=ThreadPoolExecutor(
            settings.max_batch_jobs or DEFAULT_BATCH_THREADS,
            thread_name_prefix="upload",
            initializer=_yield_to_live_streams,
        ),
        words=custom_words,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(scheduler.recognizer.warm_up)
        # A full garbage collection walks every object alive, and torch, numba and
        # FastAPI leave ~320,000 of them: one stopped the event loop, and with it every
        # stream, for 226 ms under load (measured).  Frozen, the startup objects are
        # left out of all later collections.
        gc.collect()
        gc.freeze()
        scheduler.start()
        yield
        await scheduler.stop()
        services.batch_pool.shutdown(wait=False, cancel_futures=True)
        metrics.process_exiting()

    app = FastAPI(
        title="spikeear",
        version="0.1.0",
        description="Speech command recognition with a spiking neural network: streaming "
        "WebSocket (/v1/stream), Vosk-compatible WebSocket (/vosk), batch transcription.  "
        "The WebSocket messages are the schemas StreamConfig and StreamMessage (/v1/stream), "
        "VoskConfig and VoskMessage (/vosk).",
        lifespan=lifespan,
    )
    app.state.services = services
    _document_websocket_messages(app)
    for module in (ops, stream, vosk, batch, words):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(AccessControl, services=services)
    if settings.allow_origins:  # added last: outermost, so preflights need no key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.allow_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Content-Type", *KEY_HEADERS],
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        # Starlette's and FastAPI's own errors (404, 405, an unparsable multipart body)
        # answer {"detail"}; this API answers every error as {"error"}.
        metrics.errors.labels(f"http_{error.status_code}").inc()
        return JSONResponse(
            {"error": str(error.detail)}, status_code=error.status_code, headers=error.headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        metrics.errors.labels("http_422").inc()
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return JSONResponse({"error": f"{where}: {first['msg']}"}, status_code=422)

    return app


def _document_websocket_messages(app: FastAPI) -> None:
    """Add the WebSocket messages to the app's OpenAPI document as named schemas:
    FastAPI leaves WebSocket routes out of it, and their messages are most of the API."""
    build = app.openapi  # FastAPI's own, which builds the document once and keeps it

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = build().setdefault("components", {}).setdefault("schemas", {})
            schemas.update(websocket_components())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_environment() -> FastAPI:
    """Factory for ``uvicorn --workers``: each worker process builds its own app."""
    settings = Settings.from_environment()
    # A fresh process has one torch thread per core; spinning idle threads then
    # cost the workers (and the other worker's core) more CPU than the streams.
    torch.set_num_threads(settings.torch_threads)
    return create_app(settings)
