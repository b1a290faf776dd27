"""The machine profiles the planner plans for."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from gpu_optimizer.api.schemas import MachineOut
from gpu_optimizer.machines import MachineProfileError, load_machine_profiles

router = APIRouter(tags=["machines"])


@router.get("/machines", response_model=list[MachineOut])
def machines() -> list[MachineOut]:
    """The profiles of the machine profile file (GPU_OPT_MACHINES_FILE or the default)."""
    try:
        profiles = load_machine_profiles()
    except MachineProfileError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    return [
        MachineOut(
            name=p.name, gpu=p.gpu, vram_bytes=p.vram_bytes, compute_capability=p.compute_capability
        )
        for p in profiles
    ]
