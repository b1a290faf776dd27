"""What a stream reads from: a camera index, a file under the data directory, or a URL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pose_analyzer.detectors.replay import KEYPOINT_SUFFIXES

URL_SCHEMES = ("rtsp", "rtsps", "http", "https", "udp", "tcp", "rtmp", "srt")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts")


class SourceError(ValueError):
    """The source is not acceptable; the message says why and what to pass instead."""


@dataclass(frozen=True)
class Source:
    kind: Literal["camera", "file", "url"]
    target: str | int  # camera index, absolute file path, or URL
    text: str  # as the user gave it

    @property
    def live(self) -> bool:
        return self.kind != "file"

    @property
    def keypoints(self) -> bool:
        """A keypoint JSON Lines file, replayed instead of detected."""
        return self.kind == "file" and str(self.target).lower().endswith(KEYPOINT_SUFFIXES)


def parse_source(value: str | int, data_dir: Path) -> Source:
    """Validate a source; files must lie inside `data_dir` (no path escapes)."""
    if isinstance(value, bool):
        raise SourceError("source must be a camera index, a file under the data directory or a URL")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        index = int(value)
        if not 0 <= index <= 63:
            raise SourceError(f"camera index {index} is out of range (0-63)")
        return Source("camera", index, str(value))
    text = str(value).strip()
    if not text:
        raise SourceError("source is empty: give a camera index, a file or a URL")
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in URL_SCHEMES:
            raise SourceError(
                f"unsupported URL scheme {scheme!r} in {text!r}; "
                f"use one of {', '.join(URL_SCHEMES)}"
            )
        return Source("url", text, text)
    root = data_dir.resolve()
    candidate = Path(text)
    path = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not path.is_relative_to(root):
        raise SourceError(
            f"file {text!r} is outside the data directory; put it under {root.name}/ "
            "and pass its path relative to it"
        )
    if not path.exists():
        raise SourceError(f"file {text!r} does not exist under the data directory")
    if not path.is_file():
        raise SourceError(f"{text!r} is not a file")
    if path.suffix.lower() not in VIDEO_SUFFIXES + KEYPOINT_SUFFIXES:
        raise SourceError(
            f"{text!r} is not a supported file: videos ({', '.join(VIDEO_SUFFIXES)}) "
            f"or keypoint files ({', '.join(KEYPOINT_SUFFIXES)})"
        )
    return Source("file", str(path), text)
