"""Live streams: sources, frame readers with drop policies, the per-stream pipeline, fan-out."""
