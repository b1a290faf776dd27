"""Live multi-stream pose analysis: joint angles, rep counting, form scoring, anomaly flags."""

__version__ = "0.1.0"
