"""Wire schemas of the GPU optimizer API (tables live in gpu_optimizer.storage)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from gpu_optimizer.api.http import ErrorOut
from gpu_optimizer.storage import JobState, ProfilingJob

__all__ = ["ErrorOut"]

MAX_DIMS = 6
MAX_DIM = 1 << 16


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


Optimizer = Annotated[Literal["sgd", "adam", "adamw", "adamw8bit"], BeforeValidator(_lower)]
Dtype = Annotated[
    Literal["fp32", "bf16", "fp16", "bf16-true", "fp16-true", "bf16-master", "fp16-master"],
    BeforeValidator(_lower),
]
ModelSpec = Annotated[
    str,
    Field(
        min_length=1,
        max_length=512,
        description="torchvision name (resnet50), Ultralytics yaml (yolo11n-pose.yaml), "
        "hf:ARCH[:TASK][?key=value&...] (transformers config class, e.g. hf:gpt2), or "
        "file.py:factory / package.module:factory / hf:config.json under the service's user "
        "models directory",
    ),
]
InputShape = Annotated[
    list[int] | str,
    Field(
        description='one sample\'s shape without the batch: [3, 224, 224] or "3,224,224"; '
        "[seq_len] for token models (hf:gpt2)",
        examples=[[3, 224, 224]],
    ),
]


def _check_shape(value: list[int] | str) -> list[int]:
    """The wire format of a shape; the worker parses it again with the library's parse_shape."""
    parts = value if isinstance(value, list) else str(value).replace("x", ",").split(",")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if not dims or any(d <= 0 for d in dims):
        raise ValueError(
            f"bad input shape {value!r}: expected positive integers such as [3, 224, 224] "
            'or "3,224,224"'
        )
    if len(dims) > MAX_DIMS or any(d > MAX_DIM for d in dims):
        raise ValueError(
            f"input shape {dims} is out of range: "
            f"at most {MAX_DIMS} dimensions of at most {MAX_DIM}"
        )
    return dims


class FineTuning(BaseModel):
    """Fine-tuning setup fields shared by profiles and plans (gpu_optimizer.finetune)."""

    # strict: no "32" or true for an integer; no NaN or Infinity for a number.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    lora_r: int = Field(default=0, ge=0, le=4096, description="LoRA rank (0: no LoRA)")
    lora_targets: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=list, max_length=64, description="module names, e.g. q_proj, v_proj"
    )
    freeze: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list, max_length=64, description="globs of parameter names to freeze"
    )
    grad_accum: int = Field(default=1, ge=1, le=4096, description="micro-batches per step")


class ProfileRequest(FineTuning):
    model: ModelSpec
    input_shape: InputShape
    batch_size: int = Field(ge=1, description="capped by the service setting max_batch_size")
    optimizer: Optimizer = "adamw"
    dtype: Dtype = "fp32"
    mode: Annotated[Literal["estimate", "measure"], BeforeValidator(_lower)] = "estimate"
    device: Annotated[Literal["cpu", "cuda"], BeforeValidator(_lower)] | None = None
    memory_budget_bytes: int | None = Field(
        default=None, ge=1, description="fail the job if its peak (bytes) is above this"
    )

    _shape = field_validator("input_shape")(_check_shape)


class PlanRequest(FineTuning):
    model: ModelSpec
    input_shape: InputShape
    optimizer: Optimizer = "adamw"
    dtype: Dtype = "fp32"
    mode: Annotated[Literal["train", "infer"], BeforeValidator(_lower)] = "train"

    _shape = field_validator("input_shape")(_check_shape)


class JobCreated(BaseModel):
    id: str
    state: JobState
    url: str


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time we store is UTC.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


class JobSummary(BaseModel):
    id: str
    state: JobState
    model: str
    mode: str
    progress: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None

    @classmethod
    def from_row(cls, job: ProfilingJob) -> JobSummary:
        return cls(
            id=job.id,
            state=job.state,
            model=job.model,
            mode=job.mode,
            progress=job.progress,
            created_at=_utc(job.created_at),
            started_at=_utc_or_none(job.started_at),
            finished_at=_utc_or_none(job.finished_at),
            error=job.error,
        )


class JobOut(JobSummary):
    request: dict[str, Any]
    result: dict[str, Any] | None = Field(
        description="estimate: peak_bytes, breakdown {parameters, gradients, optimizer_state, "
        "activations, temporary}, phase_peaks, per_module, predicted_cuda"
    )

    @classmethod
    def from_row(cls, job: ProfilingJob) -> JobOut:
        summary = JobSummary.from_row(job)
        return cls(**summary.model_dump(), request=job.request, result=job.result)


class MachineOut(BaseModel):
    name: str
    gpu: str
    vram_bytes: int
    compute_capability: str


class MachinePlanOut(BaseModel):
    machine: MachineOut
    batch_plain: int
    batch_checkpointing: int
    batch_offload: int
    recommended_batch: int
    recommended_plan: str
    # Where measure-fleet measured this card: this workload's measured peaks with the
    # estimate's error, and the overhead model refitted from the card's measurements.
    measured: list[dict[str, Any]] | None = None
    overhead: dict[str, Any] | None = None


class PlanOut(BaseModel):
    model: str
    input_shape: list[int]
    optimizer: str
    dtype: str
    mode: str
    machines: list[MachinePlanOut]
