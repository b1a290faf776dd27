"""HTTP layer of the pose service: translates requests to library calls, nothing more."""

from pose_analyzer.api.app import create_app

__all__ = ["create_app"]
