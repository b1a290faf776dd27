"""Route modules of the GPU optimizer API, each a thin translation from HTTP to library calls."""
