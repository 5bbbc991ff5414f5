"""``/v1/words``: custom words, enrolled from recordings or synthesized speech."""

from __future__ import annotations

import asyncio
import tempfile

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.routers.batch import draining, error_response, shown_name, spool_suffix, spool_upload
from app.schemas import ErrorBody
from app.words import Recording, WordExistsError, synthesized, word_summary
from audio_frontend.audio_io import AudioError, load_audio
from models.custom_words import MAX_EXAMPLES, CustomWordError

router = APIRouter()
MAX_RECORDING_BYTES = 4 * 1024 * 1024  # 5 s of 48 kHz stereo 32-bit float is under 2 MB


class EnrolledWord(BaseModel):
    word: str
    examples: int


class CustomWordInfo(EnrolledWord):
    sources: list[str]


class WordList(BaseModel):
    words: list[CustomWordInfo]


@router.get("/v1/words", response_model=WordList)
async def list_words(request: Request) -> dict:
    """The custom words every endpoint recognises (besides the model's own)."""
    words = request.app.state.services.words
    words.refresh()
    return {"words": [word_summary(w) for w in words.words.words]}


@router.post(
    "/v1/words",
    status_code=201,
    response_model=EnrolledWord,
    responses={
        400: {"model": ErrorBody, "description": "bad word or recordings"},
        409: {"model": ErrorBody, "description": "already enrolled, or a built-in word"},
        413: {"model": ErrorBody},
        415: {"model": ErrorBody},
        503: {"model": ErrorBody, "description": "the server is shutting down"},
    },
)
async def enroll_word(
    request: Request,
    word: str = Form(..., description="the new word: letters, an apostrophe or hyphen inside"),
    files: list[UploadFile] | None = File(
        None, description=f"recordings of the word, one word each (at most {MAX_EXAMPLES})"
    ),
    synthesize: bool = Form(False, description="also enroll it from offline synthetic voices"),
) -> JSONResponse:
    """Enroll a custom word from 3-10 recordings (wav, flac or ogg; one word and at most
    5 s each), synthesized speech, or both."""
    services = request.app.state.services
    if services.streams.shutting_down:
        return draining(request)
    words = services.words
    try:
        word = words.new_word(word)
    except WordExistsError as error:
        return error_response(409, str(error), request)
    except CustomWordError as error:
        return error_response(400, str(error), request)
    files = files or []
    if not files and not synthesize:
        return error_response(
            400, "give recordings of the word as 'files', or synthesize=true", request
        )
    if len(files) > MAX_EXAMPLES:
        return error_response(400, f"at most {MAX_EXAMPLES} recordings per word", request)
    recordings = []
    for upload in files:
        name = shown_name(upload.filename)
        with tempfile.NamedTemporaryFile(suffix=spool_suffix(upload.filename)) as spool:
            if await spool_upload(upload, spool, MAX_RECORDING_BYTES) is None:
                return error_response(
                    413, f"{name}: larger than {MAX_RECORDING_BYTES} bytes", request
                )
            try:
                audio, sample_rate = load_audio(spool.name)
            except AudioError as error:
                return error_response(415, str(error).replace(spool.name, name), request)
        recordings.append(Recording(name, audio, sample_rate))

    def enroll():
        examples = [*recordings, *(synthesized(word) if synthesize else [])]
        return words.enroll(word, examples)

    try:
        # In the upload threads, at the lowest priority: live streams come first.
        enrolled = await asyncio.get_running_loop().run_in_executor(services.batch_pool, enroll)
    except WordExistsError as error:
        return error_response(409, str(error), request)
    except CustomWordError as error:
        return error_response(400, str(error), request)
    return JSONResponse({"word": enrolled.word, "examples": enrolled.examples}, status_code=201)


@router.delete(
    "/v1/words/{word}",
    status_code=204,
    responses={404: {"model": ErrorBody}},
)
async def delete_word(request: Request, word: str) -> Response:
    """Forget a custom word (streams already open stop reporting it at once)."""
    words = request.app.state.services.words
    if not await asyncio.to_thread(words.remove, word.strip().lower()):
        return error_response(404, f"{word!r} is not a custom word", request)
    return Response(status_code=204)
