"""GPU memory profiling, GPU-free estimation and batch-size planning for PyTorch training."""

__version__ = "0.1.0"
