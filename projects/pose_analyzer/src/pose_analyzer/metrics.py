"""The one Prometheus registry of the pose service, chosen here and injected everywhere else.

Label values are bounded: `stream` is the stream's slot (0 .. max_streams-1, reused),
`stage` and `reason` are fixed sets, `exercise` and `code` come from the exercise
definitions on disk.
"""

from __future__ import annotations

import contextlib

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from pose_analyzer import __version__

STAGES = ("read", "detect", "analyze", "publish")
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5)


class PoseMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.frames_read = Counter(
            "pose_frames_read_total", "Frames read from the source", ["stream"], registry=registry
        )
        self.frames_processed = Counter(
            "pose_frames_processed_total",
            "Frames that went through the whole pipeline",
            ["stream"],
            registry=registry,
        )
        self.frames_dropped = Counter(
            "pose_frames_dropped_total",
            "Frames dropped before processing (the reader kept only the newest)",
            ["stream"],
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "pose_stage_duration_seconds",
            "Time per pipeline stage per frame",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.frame_to_publish = Histogram(
            "pose_frame_to_publish_seconds",
            "From reading a frame to publishing its result",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.active_streams = Gauge(
            "pose_active_streams", "Streams currently running", registry=registry
        )
        self.stream_fps = Gauge(
            "pose_stream_processed_fps",
            "Processed frames per second",
            ["stream"],
            registry=registry,
        )
        self.ws_clients = Gauge(
            "pose_websocket_clients", "Connected WebSocket clients", registry=registry
        )
        self.ws_dropped = Counter(
            "pose_websocket_messages_dropped_total",
            "Messages dropped for WebSocket clients that could not keep up",
            registry=registry,
        )
        self.ws_disconnects = Counter(
            "pose_websocket_disconnects_total",
            "WebSocket clients disconnected by the server",
            ["reason"],
            registry=registry,
        )
        self.reps = Counter(
            "pose_reps_total", "Completed repetitions", ["exercise"], registry=registry
        )
        self.faults = Counter(
            "pose_faults_total",
            "Form faults found in completed reps",
            ["exercise", "code"],
            registry=registry,
        )
        self.anomalies = Counter(
            "pose_anomalies_total", "Reps flagged as anomalous", ["exercise"], registry=registry
        )
        self.rep_score = Histogram(
            "pose_rep_score",
            "Form score of completed reps (0-100)",
            ["exercise"],
            buckets=(10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100),
            registry=registry,
        )
        self.reconnects = Counter(
            "pose_stream_reconnects_total",
            "Live source reconnect attempts",
            ["stream"],
            registry=registry,
        )
        self.detect_batch = Histogram(
            "pose_detect_batch_frames",
            "Frames per batched detector inference (YOLO, across streams)",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
            registry=registry,
        )
        # Rigs (multiview/service.py): labelled by rig id, removed when the rig ends, so
        # at most POSE_MAX_STREAMS / 2 rigs have series at once.
        self.active_rigs = Gauge("pose_active_rigs", "Rigs currently running", registry=registry)
        self.rig_instants = Counter(
            "pose_rig_instants_total", "Fused instants published", ["rig"], registry=registry
        )
        self.rig_fps = Gauge(
            "pose_rig_fused_fps", "Fused instants per second (last 2 s)", ["rig"], registry=registry
        )
        self.rig_views_used = Gauge(
            "pose_rig_views_used", "Views fused in the last instant", ["rig"], registry=registry
        )
        self.rig_reprojection = Histogram(
            "pose_rig_reprojection_error_px",
            "Mean reprojection error of each fused person per instant (pixels)",
            ["rig"],
            buckets=(1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50),
            registry=registry,
        )
        self.rig_latency = Histogram(
            "pose_rig_frame_to_publish_seconds",
            "From reading the last view's frame of an instant to publishing the instant",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # The live re-detection search (MediaPipe streams), all streams together; the
        # keys are those of streams.runner.search_stats.
        self.search_counters = {
            "frames_searched": Counter(
                "pose_search_frames_total",
                "Stream frames on which the re-detection search ran",
                registry=registry,
            ),
            "crops": Counter(
                "pose_search_crops_total",
                "Crops around lost people searched by the landmarker",
                registry=registry,
            ),
            "tiles": Counter(
                "pose_search_tiles_total",
                "Tiles of empty frames searched by the landmarker",
                registry=registry,
            ),
            "found": Counter(
                "pose_search_found_total",
                "People the re-detection search added",
                registry=registry,
            ),
            "over_budget": Counter(
                "pose_search_over_budget_total",
                "Frames on which the time budget stopped the search",
                registry=registry,
            ),
            "capped": Counter(
                "pose_search_capped_total",
                "Frames on which the crops-per-frame limit stopped the search",
                registry=registry,
            ),
        }
        self.jobs = Counter(
            "pose_jobs_total", "Offline analysis jobs by final state", ["state"], registry=registry
        )

    def forget_stream(self, slot: str) -> None:
        """Drop a stopped stream's series so the exposition only shows running slots."""
        per_stream = (
            self.frames_read,
            self.frames_processed,
            self.frames_dropped,
            self.stream_fps,
            self.reconnects,
        )
        for metric in per_stream:
            with contextlib.suppress(KeyError):
                metric.remove(slot)

    def forget_rig(self, rig_id: str) -> None:
        """Drop an ended rig's series."""
        for metric in (self.rig_instants, self.rig_fps, self.rig_views_used, self.rig_reprojection):
            with contextlib.suppress(KeyError):
                metric.remove(rig_id)


def create_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    Info("pose_build", "Build information of the pose analyzer service", registry=registry).info(
        {"version": __version__}
    )
    return registry
