"""Route modules of the pose API, each a thin translation from HTTP to library calls."""
