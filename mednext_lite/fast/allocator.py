"""Keep freed CPU tensor memory in the process's heap, so large feature maps stop costing page faults.

Why: glibc serves every allocation above 32 MiB (a 3D feature map of 32 channels at 64^3 is 33.5 MiB)
with a fresh ``mmap`` and returns it on ``free``, so each such tensor pays page faults and zero-filling
again, many times per training step. The measured gain is in ``docs/kernels.md``.
"""

from __future__ import annotations

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt() parameter numbers
_INT_MAX = 2**31 - 1


def keep_freed_memory(threshold_bytes: int = 2**30) -> bool:
    """Raise glibc's mmap and trim thresholds to ``threshold_bytes``, so freed blocks up to that size
    stay in the heap for the next step.

    The price: the process keeps its peak memory after a peak. Process-wide, so call it once, early
    (the trainer does on CPU without gradient checkpointing). Returns ``False`` where the C library
    has no ``mallopt`` (macOS, musl, Windows).
    """
    if not 0 < threshold_bytes <= _INT_MAX:
        raise ValueError(f"threshold_bytes={threshold_bytes} must be in 1..{_INT_MAX} (mallopt takes a C int)")
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim = min(2 * threshold_bytes, _INT_MAX)
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
