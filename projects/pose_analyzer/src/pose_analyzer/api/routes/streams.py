"""Live streams: start, list, follow (WebSocket), stop."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, HTTPException, Response, WebSocket, WebSocketDisconnect

from gpu_optimizer.api.http import WS_NOT_FOUND
from pose_analyzer.api.deps import CatalogDep, ManagerDep
from pose_analyzer.api.errors import responses
from pose_analyzer.api.schemas import StreamCreate, StreamInfo
from pose_analyzer.streams.manager import StreamManager

router = APIRouter(tags=["streams"])


@router.post(
    "/streams",
    status_code=201,
    response_model=StreamInfo,
    responses=responses(400, 422, 429),
)
async def start_stream(
    body: StreamCreate, manager: ManagerDep, catalog: CatalogDep, response: Response
) -> dict[str, Any]:
    exercise = catalog.get(body.exercise)
    runner = await manager.start(
        body.source,
        exercise,
        body.backend,
        body.model,
        body.realtime,
        search=body.search,
        search_budget_ms=body.search_budget_ms,
        search_max_crops=body.search_max_crops,
    )
    response.headers["Location"] = f"/streams/{runner.id}"
    return runner.describe()


@router.get("/streams", response_model=list[StreamInfo])
def list_streams(manager: ManagerDep) -> list[dict[str, Any]]:
    return manager.list()


@router.get("/streams/{stream_id}", response_model=StreamInfo, responses=responses(404))
def get_stream(stream_id: str, manager: ManagerDep) -> dict[str, Any]:
    runner = manager.get(stream_id)
    if runner is None:
        raise HTTPException(404, f"no stream {stream_id[:64]!r}; GET /streams lists them")
    return runner.describe()


@router.delete("/streams/{stream_id}", response_model=StreamInfo, responses=responses(404))
async def stop_stream(stream_id: str, manager: ManagerDep) -> dict[str, Any]:
    info = await manager.stop(stream_id)
    if info is None:
        raise HTTPException(404, f"no stream {stream_id[:64]!r}; GET /streams lists them")
    return info


@router.websocket("/ws/streams/{stream_id}")
async def stream_socket(websocket: WebSocket, stream_id: str, frames: bool = False) -> None:
    """One JSON message per processed frame. Close codes: 4401 missing or wrong API key
    (sent by the key middleware), 4404 no such stream, 1000 the stream ended."""
    manager: StreamManager = websocket.app.state.manager
    await websocket.accept()
    runner = manager.get(stream_id)
    if runner is None:
        await websocket.close(code=WS_NOT_FOUND, reason=f"no stream {stream_id[:64]}")
        return
    await follow(websocket, runner, frames, ended="stream ended")


async def follow(websocket: WebSocket, runner: Any, frames: bool, ended: str) -> None:
    """Send a live runner's messages (a stream's or a rig's: `hub`, `finished`,
    `final_message`) to an accepted client until either side closes; a runner that has
    already ended sends its closing summary and closes with 1000 and `ended`."""
    metrics = websocket.app.state.metrics
    if runner.finished.is_set():  # too late for messages: the closing summary, then close
        if runner.final_message is not None:
            await websocket.send_text(json.dumps(runner.final_message))
        await websocket.close(code=1000, reason=ended)
        return
    client = runner.hub.add(websocket, want_frames=frames)
    metrics.ws_clients.inc()
    try:
        receiver = asyncio.ensure_future(_receive(websocket, client))
        closed = asyncio.ensure_future(client.closed.wait())
        await asyncio.wait({receiver, closed}, return_when=asyncio.FIRST_COMPLETED)
        for task in (receiver, closed):
            task.cancel()
    finally:
        runner.hub.remove(client)
        metrics.ws_clients.dec()


async def _receive(websocket: WebSocket, client: Any) -> None:
    """Read client messages: {"frames": true|false} toggles JPEG frames."""
    try:
        while True:
            text = await websocket.receive_text()
            try:
                message = json.loads(text)
            except ValueError:
                continue
            if isinstance(message, dict) and isinstance(message.get("frames"), bool):
                client.want_frames = message["frames"]
    except (WebSocketDisconnect, RuntimeError, KeyError):
        return
