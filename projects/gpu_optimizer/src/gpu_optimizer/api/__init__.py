"""HTTP layer of the GPU optimizer service: translates requests to library calls, nothing more."""

from gpu_optimizer.api.app import create_app

__all__ = ["create_app"]
