"""`pose-analyzer batch`: a folder of recordings analysed in parallel on Ray, one task per file.

Each task runs exactly what `pose-analyzer analyze` runs on that file alone
(:func:`analyze_file`), in a scratch directory on whichever node Ray picks,
and sends the report files back; only the driver writes the output folder
and the database, once per video, so a task that Ray retries after its
worker or node died is still stored once. A video is keyed by the hash of
its content and the analysis options: a rerun skips every key already
stored as ended whose report is on disk, unless ``force``.

Inputs travel with the task (through Ray's object store) when the cluster
is not this machine, so the other machines need no shared folder; on a local
Ray the workers read the files in place.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete

from pose_analyzer.storage import AnomalyRow, Database, RepRow, SessionRow
from pose_analyzer.storage.models import utcnow

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
KEYPOINT_SUFFIXES = (".jsonl", ".ndjson")
SESSION_KIND = "batch"
SUMMARY_FIELDS = ("video", "athlete", "reps", "mean_score", "faults", "status", "error")
# How many tasks may wait in Ray's queue per CPU of the cluster: enough to keep
# every worker busy, few enough that shipped inputs do not fill the object store.
IN_FLIGHT_PER_CPU = 2
HASH_CHUNK = 1 << 20
# A task reports its frames done to the driver at most this often (and once at the end).
FRAMES_EVERY_S = 0.25


class BatchError(ValueError):
    """The batch cannot start (no inputs, bad option); the message says what to fix."""


def analyze_file(
    input_path: Path,
    exercise: str,
    *,
    backend: str | None,
    model: str | None,
    out_dir: Path,
    video: bool,
    on_frame: Callable[[Any], None] | None = None,
) -> Any:
    """One recording, exactly as `pose-analyzer analyze` runs it: the one place to re-point.

    Returns the pipeline's Report; the report files are in ``out_dir``.
    """
    from pose_analyzer.recordings import run_analysis

    report, _paths = run_analysis(
        input_path,
        exercise,
        backend=backend,
        model=model,
        out_dir=out_dir,
        video=video,
        progress=False,
        on_frame=on_frame,
    )
    return report


# -- inputs -----------------------------------------------------------------------


@dataclass(frozen=True)
class BatchInput:
    path: Path  # absolute, what the task reads
    video: str  # as the user named it: the report's "input" and the summary's "video"
    name: str  # the output folder under DIR, unique within the batch
    key: str  # session id: content hash + analysis options
    frames: int | None


def discover(pattern: str) -> list[Path]:
    """A directory's recordings (videos and keypoint files, not recursive), or a glob's matches."""
    suffixes = VIDEO_SUFFIXES + KEYPOINT_SUFFIXES
    path = Path(pattern)
    if path.is_dir():
        found = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes]
    elif path.is_file():
        found = [path]
    else:
        found = [
            Path(p)
            for p in glob.glob(pattern, recursive=True)
            if Path(p).is_file() and Path(p).suffix.lower() in suffixes
        ]
    if not found:
        raise BatchError(
            f"{pattern}: no recordings found (a directory or glob of {', '.join(suffixes)} files)"
        )
    return sorted(found)


def content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def video_key(digest: str, exercise: str, backend: str | None, model: str | None) -> str:
    """Session id of one analysis: the same file with other options is another session."""
    options = json.dumps([digest, exercise, backend, model])
    return hashlib.sha256(options.encode()).hexdigest()[:32]


def frame_count(path: Path) -> int | None:
    """Frames in a recording, read cheaply up front for the progress bar (None if unknown)."""
    if path.suffix.lower() in KEYPOINT_SUFFIXES:
        with path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    finally:
        capture.release()
    return count if count > 0 else None


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """Each file's stem, prefixed by its parent folders where stems collide (cam01 in two dirs)."""
    names = [p.stem for p in paths]
    depth = 1
    while len(set(names)) < len(names) and depth < 8:
        counts = Counter(names)
        names = [
            "-".join([*p.parent.parts[-depth:], p.stem]) if counts[n] > 1 else n
            for p, n in zip(paths, names, strict=True)
        ]
        depth += 1
    return names


def plan_inputs(
    paths: Sequence[Path], exercise: str, backend: str | None, model: str | None
) -> list[BatchInput]:
    names = _unique_names(paths)
    return [
        BatchInput(
            path=p.resolve(),
            video=str(p),
            name=name,
            key=video_key(content_hash(p), exercise, backend, model),
            frames=frame_count(p),
        )
        for p, name in zip(paths, names, strict=True)
    ]


# -- the task -----------------------------------------------------------------------


@dataclass(frozen=True)
class BatchOptions:
    exercise: str
    backend: str | None = None
    model: str | None = None
    video: bool = False  # annotated.mp4 per recording
    force: bool = False
    cpus_per_task: float = 1.0
    gpus_per_task: float | None = None  # None: 1 for YOLO where the cluster has GPUs
    resources: dict[str, float] = field(default_factory=dict)
    max_retries: int = 1
    timeout_s: float | None = None
    ship_inputs: bool | None = None  # None: ship when the cluster is not this machine


def task_body(
    item: BatchInput, options: BatchOptions, shipped: bytes | None, events: Any
) -> dict[str, Any]:
    """Runs in a Ray worker: analyse one recording in scratch space, return the files."""
    import ray

    context = ray.get_runtime_context()
    node_id = context.get_node_id()
    pid = os.getpid()
    sent = [0.0]

    def on_frame(frame: Any) -> None:
        now = time.monotonic()
        last = frame.index + 1 == item.frames  # then the analysis proper follows
        if events is not None and (now - sent[0] >= FRAMES_EVERY_S or last):
            sent[0] = now
            events.frames.remote(item.key, pid, frame.index + 1)

    if events is not None:
        events.started.remote(item.key, node_id, pid)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pose-batch-") as scratch:
        source = item.path
        if shipped is not None:
            source = Path(scratch) / "input" / item.path.name
            source.parent.mkdir()
            source.write_bytes(shipped)
        out = Path(scratch) / "out"
        report = analyze_file(
            source,
            options.exercise,
            backend=options.backend,
            model=options.model,
            out_dir=out,
            video=options.video,
            on_frame=on_frame,
        )
        if events is not None:
            events.frames.remote(item.key, pid, int(report.frames))
        if report.input != item.video:
            # The report names the recording as the user did, wherever the task read it.
            report.input = item.video
            report.write_json(out / "report.json")
        files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
    return {
        "report": report.to_dict(),
        "files": files,
        "node_id": node_id,
        "pid": os.getpid(),
        "seconds": time.perf_counter() - started,
    }


class _Events:
    """A tiny actor on the driver's node: which task started where (attempts), and the
    frames each running task has done (the progress bar's frames, while videos run)."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, str, int]] = []
        self.done: dict[str, tuple[int, int]] = {}  # key -> (pid of the attempt, frames)

    def started(self, key: str, node_id: str, pid: int) -> None:
        self.pending.append((key, node_id, pid))
        self.done[key] = (pid, 0)

    def frames(self, key: str, pid: int, done: int) -> None:
        if self.done.get(key, (pid, 0))[0] == pid:  # a stale attempt does not count
            self.done[key] = (pid, done)

    def drain(self) -> tuple[list[tuple[str, str, int]], dict[str, int]]:
        out, self.pending = self.pending, []
        return out, {key: frames for key, (_, frames) in self.done.items()}


# -- results ------------------------------------------------------------------------


@dataclass
class VideoOutcome:
    video: str
    name: str
    key: str
    status: str  # "done" | "skipped" | "failed"
    report: dict[str, Any] | None = None
    error: str | None = None
    node_id: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    seconds: float | None = None


@dataclass
class BatchResult:
    outcomes: list[VideoOutcome]
    summary_csv: Path
    sidecar: Path
    wall_s: float

    @property
    def failed(self) -> int:
        return sum(o.status == "failed" for o in self.outcomes)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)


def _fault_counts(person: dict[str, Any]) -> str:
    counts = Counter(f["code"] for rep in person.get("reps", []) for f in rep.get("faults", []))
    return ";".join(f"{code}:{n}" for code, n in sorted(counts.items()))


def summary_rows(outcomes: Sequence[VideoOutcome]) -> list[dict[str, Any]]:
    """One row per athlete per recording; a recording with nobody (or failed) gets one row."""
    rows: list[dict[str, Any]] = []
    for o in outcomes:
        status = "failed" if o.status == "failed" else "ok"
        people = (o.report or {}).get("people", [])
        if not people:
            rows.append(
                {"video": o.video, "athlete": "", "reps": 0 if o.report else "",
                 "mean_score": "", "faults": "", "status": status, "error": o.error or ""}
            )  # fmt: skip
        for person in people:
            scores = [float(r["score"]) for r in person.get("reps", [])]
            rows.append(
                {
                    "video": o.video,
                    "athlete": person["id"],
                    "reps": person["rep_count"],
                    "mean_score": f"{sum(scores) / len(scores):.2f}" if scores else "",
                    "faults": _fault_counts(person),
                    "status": status,
                    "error": "",
                }
            )
    return rows


def write_summary(path: Path, outcomes: Sequence[VideoOutcome]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(summary_rows(outcomes))


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    """Replace the recording's folder as a whole, so a reader never sees half of a rerun."""
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, data in files.items():
        (staging / Path(name).name).write_bytes(data)
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)


def store_session(
    db: Database,
    item: BatchInput,
    options: BatchOptions,
    report: dict[str, Any] | None,
    *,
    error: str | None = None,
) -> None:
    """The session, its reps and anomalies, in one transaction that replaces any earlier copy.

    Keyed by the video key, so storing the same result twice leaves it once.
    """
    backend = (report or {}).get("backend") or options.backend or "auto"
    with db.session() as session:
        session.execute(delete(RepRow).where(RepRow.session_id == item.key))
        session.execute(delete(AnomalyRow).where(AnomalyRow.session_id == item.key))
        session.execute(delete(SessionRow).where(SessionRow.id == item.key))
        now = utcnow()
        session.add(
            SessionRow(
                id=item.key,
                kind=SESSION_KIND,
                source=item.video,
                exercise=(report or {}).get("exercise", options.exercise),
                backend=str(backend),
                status="ended" if report is not None else "failed",
                started_at=now,
                ended_at=now,
                frames=int((report or {}).get("frames", 0)),
                error=error,
            )
        )
        session.flush()
        for person in (report or {}).get("people", []):
            for rep in person["reps"]:
                session.add(
                    RepRow(
                        session_id=item.key,
                        person_id=int(person["id"]),
                        index=int(rep["index"]),
                        start_s=float(rep["start_s"]),
                        end_s=float(rep["end_s"]),
                        score=float(rep["score"]),
                        faults=list(rep.get("faults", [])),
                        metrics=dict(rep.get("metrics", {})),
                    )
                )
            for anomaly in person.get("anomalies", []):
                session.add(
                    AnomalyRow(
                        session_id=item.key,
                        person_id=int(person["id"]),
                        rep_index=int(anomaly["rep_index"]),
                        reason=str(anomaly["reason"]),
                    )
                )
        session.commit()


def _already_done(db: Database, item: BatchInput, out_dir: Path) -> dict[str, Any] | None:
    """The stored report of a finished analysis of this exact content, or None."""
    report_file = out_dir / item.name / "report.json"
    with db.session() as session:
        row = session.get(SessionRow, item.key)
        if row is None or row.status != "ended" or not report_file.is_file():
            return None
    try:
        data: dict[str, Any] = json.loads(report_file.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return data


def describe_task_error(exc: BaseException) -> str:
    """The first line a user needs: the task's own exception, not Ray's wrapping."""
    import ray.exceptions

    cause = exc
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
    text = str(cause).strip()
    if isinstance(cause, ray.exceptions.RayTaskError):
        # A traceback dump: keep the final "Type: message" line.
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return lines[-1].strip() if lines else type(cause).__name__
    first = text.splitlines()[0] if text else ""
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__


# -- the driver ---------------------------------------------------------------------


Event = Callable[[str, VideoOutcome | BatchInput, dict[str, Any]], None]


@contextlib.contextmanager
def _progress_bar(
    enabled: bool | None, videos: int, frames: int | None
) -> Iterator[Callable[[int, int, str], None]]:
    from rich.console import Console

    console = Console(stderr=True)
    if enabled is None:
        enabled = console.is_terminal
    if not enabled:
        yield lambda done_videos, done_frames, text: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        v = bar.add_task("videos", total=videos)
        f = bar.add_task("frames", total=frames)

        def update(done_videos: int, done_frames: int, text: str) -> None:
            bar.update(v, completed=done_videos, description=f"videos {text}".rstrip())
            bar.update(f, completed=done_frames)

        yield update


def run_batch(
    paths: Sequence[Path],
    out_dir: str | Path,
    options: BatchOptions,
    *,
    database: Database,
    cluster: str | None = None,
    num_cpus: int | None = None,
    progress: bool | None = None,
    on_event: Event | None = None,
) -> BatchResult:
    """Analyse ``paths`` on Ray, write DIR/<name>/, summary.csv, batch.json and the database.

    ``on_event(kind, subject, info)`` is called on the driver for "started"
    (a task began on a node; subject is the BatchInput), "progress" (a running
    task's frames: info has frames_done and frames_total, the count read up
    front; reported about four times a second) and "finished" (subject is the
    VideoOutcome), e.g. to follow or disturb a batch. The progress bar (videos
    and frames) draws from the same events.
    """
    from gpu_optimizer.cluster import connect

    wall = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = plan_inputs(paths, options.exercise, options.backend, options.model)
    duplicates = sorted(k for k, n in Counter(i.key for i in items).items() if n > 1)
    if duplicates:
        same = sorted(i.video for i in items if i.key in duplicates)
        raise BatchError(f"the same recording is listed more than once: {', '.join(same)}")
    outcomes: dict[str, VideoOutcome] = {}
    todo: list[BatchInput] = []
    for item in items:
        done = None if options.force else _already_done(database, item, out)
        if done is not None:
            outcomes[item.key] = VideoOutcome(item.video, item.name, item.key, "skipped", done)
        else:
            todo.append(item)

    conn = connect(cluster, num_cpus=num_cpus) if todo else None
    try:
        if conn is not None:
            _run_tasks(conn, todo, out, options, database, outcomes, progress, on_event, items)
    finally:
        if conn is not None:
            conn.close()

    ordered = [outcomes[item.key] for item in items]
    summary = out / "summary.csv"
    write_summary(summary, ordered)
    sidecar = out / "batch.json"
    sidecar.write_text(
        json.dumps(
            {
                "exercise": options.exercise,
                "backend": options.backend,
                "model": options.model,
                "cluster": "local" if conn is None or conn.local else conn.address,
                "videos": [
                    {
                        "video": o.video,
                        "name": o.name,
                        "key": o.key,
                        "status": o.status,
                        "error": o.error,
                        "node_id": o.node_id,
                        "attempts": o.attempts,
                        "seconds": o.seconds,
                    }
                    for o in ordered
                ],
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return BatchResult(ordered, summary, sidecar, time.perf_counter() - wall)


def _run_tasks(
    conn: Any,
    todo: list[BatchInput],
    out: Path,
    options: BatchOptions,
    database: Database,
    outcomes: dict[str, VideoOutcome],
    progress: bool | None,
    on_event: Event | None,
    items: list[BatchInput],
) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    events: Any = (
        ray.remote(num_cpus=0)(_Events)
        .options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))
        .remote()
    )
    gpus = options.gpus_per_task
    if gpus is None:
        gpus = 1.0 if options.backend == "yolo" and conn.resources().get("GPU", 0) >= 1 else 0.0
    remote: Any = ray.remote(task_body).options(
        num_cpus=options.cpus_per_task,
        num_gpus=gpus,
        resources=dict(options.resources) or None,
        max_retries=options.max_retries,
        retry_exceptions=False,
    )
    ship = (not conn.local) if options.ship_inputs is None else options.ship_inputs
    cpus = max(1.0, conn.resources().get("CPU", 1.0))
    window = max(2, int(IN_FLIGHT_PER_CPU * cpus / max(options.cpus_per_task, 0.01)))
    lost = (
        ray.exceptions.ObjectLostError,
        ray.exceptions.WorkerCrashedError,
        ray.exceptions.NodeDiedError,
    )
    resubmits: Counter[str] = Counter()
    queue = list(todo)
    by_key = {item.key: item for item in todo}
    running: dict[Any, BatchInput] = {}
    started_at: dict[str, float] = {}
    node_of: dict[str, str] = {}
    live: dict[str, int] = {}  # frames done by each running task, as it last reported
    attempts: dict[str, list[dict[str, Any]]] = {item.key: [] for item in todo}
    total_frames = sum(i.frames or 0 for i in items) or None
    done_frames = sum(
        int((o.report or {}).get("frames", 0)) for o in outcomes.values() if o.status == "skipped"
    )

    def finish(outcome: VideoOutcome) -> None:
        outcome.attempts = attempts.get(outcome.key, [])
        outcomes[outcome.key] = outcome
        if on_event is not None:
            on_event("finished", outcome, {})

    def fail(item: BatchInput, error: str) -> None:
        store_session(database, item, options, None, error=error)
        finish(VideoOutcome(item.video, item.name, item.key, "failed", error=error))

    with _progress_bar(progress, len(items), total_frames) as update:
        update(len(outcomes), done_frames, "")
        while queue or running:
            while queue and len(running) < window:
                item = queue.pop(0)
                shipped = ray.put(item.path.read_bytes()) if ship else None
                running[remote.remote(item, options, shipped, events)] = item
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
            starts, frames_now = ray.get(events.drain.remote())
            for key, node_id, pid in starts:
                attempts[key].append({"node_id": node_id, "pid": pid})
                started_at[key], node_of[key] = time.monotonic(), node_id
                if on_event is not None:
                    on_event("started", by_key[key], {"node_id": node_id, "pid": pid})
            running_keys = {i.key for i in running.values()}
            for key, frames in frames_now.items():
                if key in running_keys and live.get(key) != frames:
                    live[key] = frames
                    if on_event is not None:
                        total = by_key[key].frames
                        on_event("progress", by_key[key], {"frames_done": frames,
                                                           "frames_total": total})  # fmt: skip
            for ref in ready:
                item = running.pop(ref)
                live.pop(item.key, None)
                try:
                    result = ray.get(ref)
                except lost as exc:
                    # The result was on a node that died before we fetched it, or Ray
                    # spent its own retries: run it again from the driver, once more.
                    if resubmits[item.key] < options.max_retries:
                        resubmits[item.key] += 1
                        queue.insert(0, item)
                    else:
                        fail(item, describe_task_error(exc))
                    continue
                except Exception as exc:
                    fail(item, describe_task_error(exc))
                    continue
                _write_files(out / item.name, result["files"])
                store_session(database, item, options, result["report"])
                done_frames += int(result["report"].get("frames", 0))
                finish(
                    VideoOutcome(
                        item.video,
                        item.name,
                        item.key,
                        "done",
                        result["report"],
                        node_id=result["node_id"],
                        seconds=round(float(result["seconds"]), 3),
                    )
                )
            if options.timeout_s is not None:
                now = time.monotonic()
                for ref, item in list(running.items()):
                    began = started_at.get(item.key)
                    if began is not None and now - began > options.timeout_s:
                        ray.cancel(ref, force=True)
                        running.pop(ref)
                        live.pop(item.key, None)
                        fail(item, f"timed out after {options.timeout_s:g} s")
            busy = Counter(node_of[i.key][:8] for i in running.values() if i.key in node_of)
            text = ", ".join(f"{n} on node {node}" for node, n in sorted(busy.items()))
            frames_running = sum(live.get(i.key, 0) for i in running.values())
            update(len(outcomes), done_frames + frames_running, f"(running {text})" if text else "")
    ray.kill(events)
