"""``POST /v1/transcribe``: a whole recording in, words with times out."""

from __future__ import annotations

import asyncio
import tempfile
import time

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse

from app.schemas import ErrorBody, Transcription
from app.service import transcript_json
from audio_frontend.audio_io import AudioError, audio_blocks
from models.recognizer import StreamOptions

router = APIRouter()
COPY_BLOCK = 1 << 20


def _error(status: int, message: str, request: Request, kind: str) -> JSONResponse:
    request.app.state.services.metrics.errors.labels(kind).inc()
    return JSONResponse({"error": message}, status_code=status)


@router.post(
    "/v1/transcribe",
    response_model=Transcription,
    responses={
        400: {"model": ErrorBody},
        413: {"model": ErrorBody},
        415: {"model": ErrorBody},
        422: {"model": ErrorBody},
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
    limit = services.settings.max_upload_bytes
    with tempfile.NamedTemporaryFile(suffix=f"-{file.filename or 'upload'}") as spool:
        size = 0
        while block := await file.read(COPY_BLOCK):
            size += len(block)
            if size > limit:
                return _error(
                    413, f"upload exceeds the limit of {limit} bytes", request, "http_413"
                )
            spool.write(block)
        spool.flush()
        if size == 0:
            return _error(400, "the uploaded file is empty", request, "http_400")
        try:
            sample_rate, _, blocks = audio_blocks(spool.name)
        except AudioError as error:
            message = str(error).replace(spool.name, file.filename or "upload")
            return _error(415, message, request, "http_415")
        started = time.perf_counter()
        recognizer = services.scheduler.recognizer
        try:
            transcript = await asyncio.to_thread(
                recognizer.transcribe,
                blocks,
                sample_rate,
                StreamOptions(sample_rate=sample_rate, min_confidence=min_confidence),
            )
        except AudioError as error:
            message = str(error).replace(spool.name, file.filename or "upload")
            return _error(400, message, request, "http_400")
    elapsed = time.perf_counter() - started
    services.metrics.transcribe_seconds.observe(elapsed)
    services.metrics.audio_seconds.labels("transcribe").inc(transcript.duration)
    services.metrics.words.labels("transcribe").inc(len(transcript.words))
    return JSONResponse(transcript_json(transcript, elapsed))
