"""Region-of-interest JPEG decoding: only the bbox's rows and columns, at a DCT scale.

A thin ctypes binding of ``reid/_jpegroi.c`` (built by ``pip install`` when libjpeg's headers
and a C compiler are present). Rows above the window are skipped without the inverse DCT,
columns outside it are not transformed, and decoding stops after its last row, so a crop of a
large camera-trap photo costs a fraction of the whole photo. :func:`available` is False when
the library was not built; callers then decode with Pillow.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util

import numpy as np

OK, ERROR, TRUNCATED, UNSUPPORTED, CORRUPT = 0, 1, 2, 3, 4


@functools.cache  # once per process, without a lock on every decode (a second load is harmless)
def _load():
    spec = importlib.util.find_spec("reid._jpegroi")
    if spec is None or not spec.origin:
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError:
        return None
    fn = lib.reid_jpeg_decode_roi
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                   ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p,
                   ctypes.c_int]  # fmt: skip
    if hasattr(lib, "reid_jpeg_check"):  # absent from a library built before it was added
        lib.reid_jpeg_check.restype = ctypes.c_int
        lib.reid_jpeg_check.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    return lib


def available() -> bool:
    return _load() is not None


def scaled_size(width: int, height: int, denom: int) -> tuple[int, int]:
    """libjpeg's output size at 1/denom scale (rounded up)."""
    return -(-width // denom), -(-height // denom)


def decode_window(
    data: bytes, denom: int, window: tuple[int, int, int, int], fast: bool
) -> tuple[np.ndarray | None, int, str]:
    """Decode ``window`` = (x, y, w, h), in pixels of the 1/denom-scaled image, to RGB uint8.

    ``fast``: Pillow's draft-mode settings (fast DCT, no fancy upsampling). Returns (pixels,
    status, message); pixels is None unless status is OK. The call releases the GIL.
    """
    lib = _load()
    if lib is None:
        return None, UNSUPPORTED, "region decoder not built"
    x, y, w, h = window
    out = np.empty((h, w, 3), np.uint8)
    msg = ctypes.create_string_buffer(200)
    status = lib.reid_jpeg_decode_roi(data, len(data), denom, int(fast), x, y, w, h,
                                      out.ctypes.data, msg, len(msg))  # fmt: skip
    return (out if status == OK else None), status, msg.value.decode("utf-8", "replace")


def check(data: bytes) -> tuple[int, str]:
    """libjpeg's verdict on every byte of a JPEG: (OK | TRUNCATED | CORRUPT | ERROR, first warning).

    Pillow decodes through libjpeg's "Corrupt JPEG data" warnings silently (the pixels are then
    partly invented); ingest refuses such files. (UNSUPPORTED, msg) when the library is not built.
    """
    lib = _load()
    if lib is None or not hasattr(lib, "reid_jpeg_check"):
        return UNSUPPORTED, "region decoder not built"
    msg = ctypes.create_string_buffer(200)
    status = lib.reid_jpeg_check(data, len(data), msg, len(msg))
    return status, msg.value.decode("utf-8", "replace")
