"""``/vosk``: the Vosk server WebSocket protocol, so existing Vosk clients work unchanged.

As in alphacep/vosk-server's ``asr_server.py``: a text message with ``config``
sets options and gets no reply; every audio message gets exactly one reply
(``{"partial": ...}`` or a result); ``{"eof" : 1}`` gets the final result and
ends the session; ``{"reset" : 1}`` gets the final result and the stream goes on.
"""

from __future__ import annotations

import contextlib
import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from app.routers.common import (
    CLOSE_INTERNAL,
    CLOSE_INVALID,
    CLOSE_NORMAL,
    CLOSE_RESTART,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    SHUTDOWN_REASON,
    Inbox,
    ProtocolError,
    check_message_rate,
    check_stream_length,
    close_with_error,
    parse_json,
)
from app.scheduler import Session, SessionFailed
from app.schemas import (
    VoskAlternative,
    VoskAlternatives,
    VoskAlternativeWord,
    VoskConfig,
    VoskMessage,
    VoskPartial,
    VoskResult,
    VoskWord,
    message_json,
)
from app.shutdown import ShuttingDown
from audio_frontend.audio_io import AudioError, check_sample_rate, decode_s16le
from models.decoding import WordEvent
from models.recognizer import StreamOptions

router = APIRouter()


def vosk_json(message: VoskMessage) -> str:
    # json.dumps' default separators, as vosk-server's replies have them.
    return json.dumps(message_json(message))


class VoskSession:
    def __init__(self, services) -> None:
        self.services = services
        self.config = VoskConfig()
        self.session: Session | None = None
        self.partial = ""

    def configure(self, values: dict) -> None:
        try:
            config = VoskConfig.model_validate({**self.config.model_dump(), **values})
            check_sample_rate(round(config.sample_rate))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "config"
            raise ProtocolError(
                CLOSE_INVALID, f"bad config value for '{where}': {first['msg']}"
            ) from None
        except (AudioError, OverflowError) as error:  # OverflowError: round() of a huge rate
            raise ProtocolError(CLOSE_INVALID, f"bad config: {error}") from None
        self.config = config

    def _ensure(self) -> Session:
        if self.session is None:
            self.services.words.refresh()  # words another worker process enrolled
            vocabulary = self.services.scheduler.recognizer.known_words
            words = None
            if self.config.phrase_list:
                phrases = {w for phrase in self.config.phrase_list for w in phrase.lower().split()}
                words = tuple(w for w in vocabulary if w in phrases)
            self.session = self.services.scheduler.open(
                StreamOptions(
                    sample_rate=round(self.config.sample_rate),
                    vocabulary=words,
                    min_confidence=self.config.min_confidence,
                    activity=False,
                )
            )
        return self.session

    async def accept_waveform(self, data: bytes) -> VoskMessage:
        session = self._ensure()
        try:
            await session.feed_audio(decode_s16le(data))
        except AudioError as error:
            raise ProtocolError(CLOSE_INVALID, str(error)) from None
        await session.processed()
        finals = self._collect(session)
        if finals:
            return self.result(finals)
        return VoskPartial(partial=self.partial)

    async def final_result(self) -> VoskResult | VoskAlternatives:
        session = self._ensure()
        await session.feed_audio(decode_s16le(b""), final=True)
        await session.processed()
        finals = self._collect(session)
        session.close()
        self.session = None
        self.partial = ""
        return self.result(finals)

    def _collect(self, session: Session) -> list[WordEvent]:
        finals = []
        while not session.events.empty():
            event = session.events.get_nowait()
            if isinstance(event, SessionFailed):
                raise RuntimeError(event.reason)
            if event.kind == "final":
                finals.append(event)
                self.partial = ""
            else:
                self.partial = event.word
        if finals:
            self.services.metrics.words.labels("vosk").inc(len(finals))
        return finals

    def result(self, finals: list[WordEvent]) -> VoskResult | VoskAlternatives:
        if self.config.max_alternatives > 0:
            return VoskAlternatives(alternatives=self._alternatives(finals))
        text = " ".join(w.word for w in finals)
        if not (self.config.words and finals):
            return VoskResult(text=text)
        words = [
            VoskWord(
                conf=round(w.confidence, 6),
                end=round(w.end, 6),
                start=round(w.start, 6),
                word=w.word,
            )
            for w in finals
        ]
        return VoskResult(result=words, text=text)

    def _alternatives(self, finals: list[WordEvent]) -> list[VoskAlternative]:
        if not finals:
            return [VoskAlternative(confidence=0.0, text="")]
        # N-best over the last word (one word per result is the common case).
        head = " ".join(w.word for w in finals[:-1])
        last = finals[-1]
        choices = last.alternatives or ((last.word, last.confidence),)
        return [
            VoskAlternative(
                confidence=round(confidence, 6),
                text=f"{head} {word}".strip(),
                result=[
                    VoskAlternativeWord(
                        start=round(last.start, 6), end=round(last.end, 6), word=word
                    )
                ]
                if self.config.words
                else None,
            )
            for word, confidence in choices[: self.config.max_alternatives]
        ]


@router.websocket("/vosk")
async def vosk_endpoint(websocket: WebSocket) -> None:
    services = websocket.app.state.services
    await websocket.accept()
    vosk = VoskSession(services)
    stream_s = 0.0  # audio seconds sent so far, resets included
    messages = 0  # audio messages so far
    services.metrics.active_streams.labels("vosk").inc()
    closing = services.streams.register()
    inbox = Inbox(websocket, closing, services.settings.max_message_bytes)
    try:
        while True:
            message = await inbox.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                control = parse_json(message["text"])
                if "config" in control:
                    if not isinstance(control["config"], dict):
                        raise ProtocolError(CLOSE_INVALID, "config must be a JSON object")
                    vosk.configure(control["config"])
                elif "eof" in control:
                    await websocket.send_text(vosk_json(await vosk.final_result()))
                    await websocket.close(CLOSE_NORMAL)
                    return
                elif "reset" in control:
                    await websocket.send_text(vosk_json(await vosk.final_result()))
                else:
                    raise ProtocolError(CLOSE_UNSUPPORTED, "expected audio, config, eof or reset")
                continue
            data = message.get("bytes") or b""
            if len(data) > services.settings.max_message_bytes:
                raise ProtocolError(CLOSE_TOO_BIG, f"message of {len(data)} bytes is too large")
            chunk_s = len(data) / 2 / vosk.config.sample_rate
            stream_s += chunk_s
            check_stream_length(services, stream_s)
            messages += 1
            check_message_rate(services, messages, stream_s)
            services.metrics.audio_seconds.labels("vosk").inc(chunk_s)
            await websocket.send_text(vosk_json(await vosk.accept_waveform(data)))
    except ProtocolError as error:
        services.metrics.errors.labels(f"vosk_{error.code}").inc()
        await close_with_error(websocket, error, send_json=False)
    except WebSocketDisconnect:
        services.metrics.errors.labels("vosk_disconnect").inc()
    except ShuttingDown:
        if vosk.session is not None:  # the word in progress, as the final result
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, ValueError):
                await websocket.send_text(vosk_json(await vosk.final_result()))
        await close_with_error(websocket, ProtocolError(CLOSE_RESTART, SHUTDOWN_REASON), False)
    except RuntimeError as error:  # the recognizer failed for this stream
        services.metrics.errors.labels("vosk_internal").inc()
        await close_with_error(websocket, ProtocolError(CLOSE_INTERNAL, str(error)), False)
    finally:
        services.streams.unregister(closing)
        inbox.close()
        services.metrics.active_streams.labels("vosk").dec()
        if vosk.session is not None:
            vosk.session.close()
