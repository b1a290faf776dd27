"""Fan-out of a stream's per-frame messages to its WebSocket clients.

One bounded queue and one sender task per client. Publishing never waits: a
client whose queue is full loses its oldest message (counted); a client that
stays full for longer than `overflow_disconnect_s` is disconnected. A slow or
vanished client therefore never slows the pipeline or the other clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

# Close code sent to a client that could not keep up (RFC 6455 1013: try again later).
CLOSE_TOO_SLOW = 1013


class Client:
    def __init__(
        self,
        websocket: WebSocket,
        *,
        want_frames: bool,
        queue_size: int,
        overflow_disconnect_s: float,
        on_drop: Callable[[int], None],
    ) -> None:
        self.websocket = websocket
        self.want_frames = want_frames
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=max(1, queue_size))
        self.overflow_disconnect_s = overflow_disconnect_s
        self._on_drop = on_drop
        self.overflow_since: float | None = None
        self.dropped = 0
        self.sent = 0
        self.closed = asyncio.Event()
        self.close_reason: str | None = None

    def offer(self, message: str) -> bool:
        """Queue a message; False when the client should be disconnected."""
        if self.closed.is_set():
            return False
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.dropped += 1
            self._on_drop(1)
            now = time.monotonic()
            if self.overflow_since is None:
                self.overflow_since = now
            elif now - self.overflow_since > self.overflow_disconnect_s:
                return False
        self.queue.put_nowait(message)
        return True

    async def sender(self) -> None:
        try:
            while True:
                message = await self.queue.get()
                await self.websocket.send_text(message)
                self.sent += 1
                if self.queue.empty():
                    self.overflow_since = None
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.close_reason = self.close_reason or "client went away"
        finally:
            self.closed.set()


class Hub:
    """The clients of one stream."""

    def __init__(
        self,
        *,
        queue_size: int,
        overflow_disconnect_s: float,
        on_drop: Callable[[int], None] = lambda _n: None,
        on_disconnect: Callable[[str], None] = lambda _reason: None,
    ) -> None:
        self.queue_size = queue_size
        self.overflow_disconnect_s = overflow_disconnect_s
        self._on_drop = on_drop
        self._on_disconnect = on_disconnect
        self.clients: set[Client] = set()
        self._tasks: dict[Client, asyncio.Task[None]] = {}

    @property
    def wants_frames(self) -> bool:
        return any(c.want_frames for c in self.clients)

    def add(self, websocket: WebSocket, *, want_frames: bool) -> Client:
        client = Client(
            websocket,
            want_frames=want_frames,
            queue_size=self.queue_size,
            overflow_disconnect_s=self.overflow_disconnect_s,
            on_drop=self._on_drop,
        )
        self.clients.add(client)
        self._tasks[client] = asyncio.get_running_loop().create_task(client.sender())
        return client

    def remove(self, client: Client) -> None:
        self.clients.discard(client)
        task = self._tasks.pop(client, None)
        if task is not None and not task.done():
            task.cancel()
        client.closed.set()

    def publish(self, message: dict[str, Any], frame_jpeg_b64: str | None = None) -> None:
        """Send one frame's message to every client (the JPEG only to those who asked)."""
        if not self.clients:
            return
        plain = dumps(message)
        with_frame = plain
        if frame_jpeg_b64 is not None:
            with_frame = plain[:-1] + f',"jpeg":"{frame_jpeg_b64}"}}'
        for client in list(self.clients):
            if not client.offer(with_frame if client.want_frames else plain):
                self.disconnect(client, "too slow: the message queue stayed full")

    def disconnect(self, client: Client, reason: str) -> None:
        client.close_reason = reason
        self._on_disconnect("slow" if reason.startswith("too slow") else "closed")
        self.remove(client)
        asyncio.get_running_loop().create_task(_close(client.websocket, reason))

    async def close_all(self, reason: str = "stream stopped") -> None:
        for client in list(self.clients):
            client.close_reason = reason
            self.remove(client)
            await _close(client.websocket, reason, code=1000)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def dumps(message: dict[str, Any]) -> str:
    """Compact JSON a browser can parse: NaN/inf (never valid JSON) become null."""
    try:
        return json.dumps(message, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(message), separators=(",", ":"), allow_nan=False)


async def _close(websocket: WebSocket, reason: str, code: int = CLOSE_TOO_SLOW) -> None:
    # A client that reads nothing may never take the close frame: do not wait for it.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(websocket.close(code=code, reason=reason[:120]), timeout=1.0)
