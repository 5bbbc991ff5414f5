"""The WebSocket transport under the service: uvicorn's sans-I/O websockets protocol, with
text frames that are not UTF-8 handed to the app instead of refused inside uvicorn."""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from app.settings import Settings

# Invalid bytes of a text frame become lone surrogates, which no UTF-8 text contains, so the
# app can tell them apart and refuse the message like any other malformed one.
UNDECODABLE = "surrogateescape"


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's own refusal of a text frame that is not UTF-8 logs an ERROR with a
    traceback, sends 1007 without the app's error message, and a second bad frame while
    closing can leave the client without a close frame (1006).  Here the app gets the
    text (``parse_json`` refuses it) and closes as it does for any malformed message."""

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type != "text":
            super().send_receive_event_to_app()
            return
        data = b"".join(self.frames)
        self.frames = []
        if self.close_sent:  # as uvicorn: past the app's close, messages are dropped
            return
        text = data.decode(errors=UNDECODABLE)
        self.queue.put_nowait({"type": "websocket.receive", "text": text})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()


def websocket_options(settings: Settings) -> dict[str, object]:
    """uvicorn keywords for the WebSocket transport, the same for every way of serving."""
    return {
        "ws": WebSocketProtocol,
        "ws_max_size": settings.transport_max_message_bytes,
        # 20 ms of PCM barely compresses, and deflate costs both ends CPU per message.
        "ws_per_message_deflate": False,
    }
