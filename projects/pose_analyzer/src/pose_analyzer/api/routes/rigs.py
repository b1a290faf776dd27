"""Live rigs (calibrated multi-camera, fused in 3D): start, list, follow (WebSocket), stop."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Response, WebSocket

from gpu_optimizer.api.http import WS_NOT_FOUND
from pose_analyzer.api.deps import CatalogDep, RigsDep
from pose_analyzer.api.errors import responses
from pose_analyzer.api.routes.streams import follow
from pose_analyzer.api.schemas import RigCreate, RigInfo
from pose_analyzer.multiview.service import RigManager

router = APIRouter(tags=["rigs"])


def _missing(rig_id: str) -> HTTPException:
    return HTTPException(404, f"no rig {rig_id[:64]!r}; GET /rigs lists them")


@router.post("/rigs", status_code=201, response_model=RigInfo, responses=responses(400, 422, 429))
async def start_rig(
    body: RigCreate, rigs: RigsDep, catalog: CatalogDep, response: Response
) -> dict[str, Any]:
    exercise = catalog.get(body.exercise)
    runner = await rigs.start(
        list(body.sources),
        body.calibration,
        exercise,
        cameras=body.cameras,
        backend=body.backend,
        model=body.model,
        realtime=body.realtime,
        fps=body.fps,
    )
    response.headers["Location"] = f"/rigs/{runner.id}"
    return runner.describe()


@router.get("/rigs", response_model=list[RigInfo])
def list_rigs(rigs: RigsDep) -> list[dict[str, Any]]:
    return rigs.list()


@router.get("/rigs/{rig_id}", response_model=RigInfo, responses=responses(404))
def get_rig(rig_id: str, rigs: RigsDep) -> dict[str, Any]:
    runner = rigs.get(rig_id)
    if runner is None:
        raise _missing(rig_id)
    return runner.describe()


@router.delete("/rigs/{rig_id}", response_model=RigInfo, responses=responses(404))
async def stop_rig(rig_id: str, rigs: RigsDep) -> dict[str, Any]:
    info = await rigs.stop(rig_id)
    if info is None:
        raise _missing(rig_id)
    return info


@router.websocket("/ws/rigs/{rig_id}")
async def rig_socket(websocket: WebSocket, rig_id: str, frames: bool = False) -> None:
    """One JSON message per fused instant (docs/api.md). Close codes: 4401 missing or wrong
    API key, 4404 no such rig, 1000 the rig ended (after its closing summary)."""
    rigs: RigManager = websocket.app.state.rigs
    await websocket.accept()
    runner = rigs.get(rig_id)
    if runner is None:
        await websocket.close(code=WS_NOT_FOUND, reason=f"no rig {rig_id[:64]}")
        return
    await follow(websocket, runner, frames, ended="rig ended")
