"""``POST /v1/transcribe``: a whole recording in, words with times out."""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import IO

import numpy as np
from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse

from app.schemas import ErrorBody, Transcription
from app.service import transcript_json
from audio_frontend.audio_io import AudioError, audio_blocks
from models.recognizer import StreamOptions

router = APIRouter()
COPY_BLOCK = 1 << 20
RETRY_AFTER_S = 5  # told to an upload refused because --max-batch-jobs are running
# An uploaded name is only ever shown in messages; the spooled file gets at most its
# extension (a hint for libsndfile), and only one of a few plain characters.
SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,10}")
SHOWN_NAME_CHARS = 100


class AudioTooLong(AudioError):
    """More audio than --max-audio-s."""


def spool_suffix(filename: str | None) -> str:
    """The extension of an uploaded file's name, if a plain one, else nothing."""
    name = (filename or "").rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    dot = name.rfind(".")
    suffix = name[dot:] if dot > 0 else ""
    return suffix if SAFE_SUFFIX.fullmatch(suffix) else ""


def shown_name(filename: str | None) -> str:
    """An uploaded file's name as messages show it: printable, and not too long."""
    name = "".join(c if c.isprintable() else "?" for c in filename or "") or "upload"
    return name if len(name) <= SHOWN_NAME_CHARS else name[: SHOWN_NAME_CHARS - 3] + "..."


def at_most(blocks: Iterable[np.ndarray], max_samples: int) -> Iterator[np.ndarray]:
    """The blocks, until more than ``max_samples`` have come (a file's header may
    understate its length: the count is what decoding yields)."""
    total = 0
    for block in blocks:
        total += len(block)
        if total > max_samples:
            raise AudioTooLong(f"more than {max_samples} samples")
        yield block


async def spool_upload(upload: UploadFile, spool: IO[bytes], limit: int) -> int | None:
    """Copy an upload into ``spool`` in blocks: its size, or None once it passes ``limit``
    bytes (the rest is never read)."""
    size = 0
    while block := await upload.read(COPY_BLOCK):
        size += len(block)
        if size > limit:
            return None
        spool.write(block)
    spool.flush()
    return size


def draining(request: Request) -> JSONResponse:
    """503 for new work while the server drains (SIGTERM): another replica should take it."""
    response = error_response(503, "the server is shutting down; try another", request)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def error_response(
    status: int, message: str, request: Request, kind: str | None = None
) -> JSONResponse:
    """``{"error": message}`` with ``status``, counted in /metrics as ``kind`` (default
    ``http_STATUS``)."""
    request.app.state.services.metrics.errors.labels(kind or f"http_{status}").inc()
    return JSONResponse({"error": message}, status_code=status)


@router.post(
    "/v1/transcribe",
    response_model=Transcription,
    responses={
        400: {"model": ErrorBody},
        413: {"model": ErrorBody, "description": "larger than the upload size or audio limit"},
        415: {"model": ErrorBody},
        422: {"model": ErrorBody},
        503: {
            "model": ErrorBody,
            "description": "as many uploads as the server takes at a time are running, or "
            "the server is shutting down; try again after Retry-After seconds",
        },
    },
)
async def transcribe(
    request: Request,
    file: UploadFile = File(...),
    min_confidence: float | None = Query(
        None,
        ge=0.0,
        le=1.0,
        description="a final less confident than this is reported as unknown (default 0.35)",
    ),
) -> JSONResponse:
    """Upload wav, flac or ogg (mp3 where libsndfile decodes it) as the multipart field ``file``."""
    services = request.app.state.services
    if services.streams.shutting_down:  # draining: the balancer should send it elsewhere
        return draining(request)
    if not services.batch_slots.acquire():
        services.metrics.limit_hits.labels("max_batch_jobs").inc()
        response = error_response(
            503,
            f"the server is running its limit of {services.batch_slots.limit} uploads; "
            f"try again in {RETRY_AFTER_S} s",
            request,
        )
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response
    try:
        return await _transcribe(request, file, min_confidence)
    finally:
        services.batch_slots.release()


async def _transcribe(
    request: Request, file: UploadFile, min_confidence: float | None
) -> JSONResponse:
    services = request.app.state.services
    limit = services.settings.max_upload_bytes
    max_audio_s = services.settings.max_audio_s
    name = shown_name(file.filename)
    # Uploaded names never reach the file system: "/", a NUL byte or 250 characters
    # in one made the spool file's path fail (500).
    with tempfile.NamedTemporaryFile(suffix=spool_suffix(file.filename)) as spool:
        size = await spool_upload(file, spool, limit)
        if size is None:
            services.metrics.limit_hits.labels("max_upload_bytes").inc()
            return error_response(
                413, f"upload exceeds the limit of {limit} bytes", request, "http_413"
            )
        if size == 0:
            return error_response(400, "the uploaded file is empty", request)
        try:
            sample_rate, duration, blocks = audio_blocks(spool.name)
        except AudioError as error:
            message = str(error).replace(spool.name, name)
            return error_response(415, message, request)
        too_long = f"{name}: longer than the server's limit of {max_audio_s:g} s of audio"
        if max_audio_s:
            if duration > max_audio_s:
                services.metrics.limit_hits.labels("max_audio_s").inc()
                return error_response(413, too_long, request)
            blocks = at_most(blocks, int(max_audio_s * sample_rate))
        started = time.perf_counter()
        services.words.refresh()  # words another worker process enrolled
        recognizer = services.scheduler.recognizer
        try:
            transcript = await asyncio.get_running_loop().run_in_executor(
                services.batch_pool,
                recognizer.transcribe,
                blocks,
                sample_rate,
                StreamOptions(sample_rate=sample_rate, min_confidence=min_confidence),
            )
        except AudioTooLong:
            services.metrics.limit_hits.labels("max_audio_s").inc()
            return error_response(413, too_long, request)
        except AudioError as error:
            message = str(error).replace(spool.name, name)
            return error_response(400, message, request)
    elapsed = time.perf_counter() - started
    services.metrics.transcribe_seconds.observe(elapsed)
    services.metrics.audio_seconds.labels("transcribe").inc(transcript.duration)
    services.metrics.words.labels("transcribe").inc(len(transcript.words))
    return JSONResponse(transcript_json(transcript, elapsed))
