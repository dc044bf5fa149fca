"""Kernel backends. Nothing here imports torch or fx: kernels see numpy arrays only."""
