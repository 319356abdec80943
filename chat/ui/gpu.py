"""The optional ZeroGPU path: `spaces.GPU` on a ZeroGPU Space, the function itself elsewhere.

ZeroGPU runs a decorated function in a forked process that holds a GPU for its duration, so
only functions that run the model are decorated, and they must return (or yield) every change
they make. Untested here (no ZeroGPU hardware); free CPU Spaces and local runs never import
`spaces`.
"""
from __future__ import annotations

import os

GPU_SECONDS = 120  # the longest reply (2,048 tokens) on a shared GPU stays well inside this


def on_zero_gpu() -> bool:
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


def gpu(fn):
    if not on_zero_gpu():
        return fn
    import spaces

    return spaces.GPU(duration=GPU_SECONDS)(fn)
