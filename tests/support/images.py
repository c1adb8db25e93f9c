"""Real image files for tests: good photos and the classic ways photos go bad."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def photo(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    """A textured RGB image whose left half is red-ish and right half blue-ish (orientation visible)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    arr[:, : w // 2, 0] += 180
    arr[:, w // 2 :, 2] += 180
    return Image.fromarray(arr, "RGB")


def jpeg_bytes(img: Image.Image, exif_orientation: int | None = None, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    kwargs = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        exif[0x0132] = "2023:06:01 12:34:56"
        kwargs["exif"] = exif.tobytes()
    img.save(buf, format="JPEG", quality=quality, **kwargs)
    return buf.getvalue()


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny PNG that declares width x height pixels (a decompression bomb), built by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def bad_folder(root: Path) -> dict[str, str | None]:
    """A folder of photos, good and bad; returns relpath -> expected reject reason prefix (None=good)."""
    expect: dict[str, str | None] = {}

    def put(rel: str, data: bytes, reason: str | None) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        expect[rel] = reason

    good = photo()
    put("ayo/good.jpg", jpeg_bytes(good), None)
    put("ayo/rotated.jpg", jpeg_bytes(good, exif_orientation=6), None)  # stored landscape, shown portrait
    buf = io.BytesIO()
    good.convert("CMYK").save(buf, format="JPEG")
    put("ayo/cmyk.jpg", buf.getvalue(), None)
    arr16 = (np.linspace(0, 65535, 64 * 96).reshape(64, 96)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr16).save(buf, format="PNG")
    put("bo/gray16.png", buf.getvalue(), None)
    buf = io.BytesIO()
    good.convert("P", palette=Image.Palette.ADAPTIVE).save(buf, format="PNG")
    put("bo/palette.png", buf.getvalue(), None)
    buf = io.BytesIO()
    good.convert("RGBA").save(buf, format="PNG")
    put("bo/rgba.png", buf.getvalue(), None)
    buf = io.BytesIO()
    good.convert("L").save(buf, format="PNG")
    put("bo/gray.png", buf.getvalue(), None)
    jpg = jpeg_bytes(photo(seed=3))
    put("bo/corrupt.jpg", jpg[:20] + b"\x00garbage" * 50, "corrupt")
    png = io.BytesIO()
    photo(seed=4).save(png, format="PNG")
    put("bo/truncated.png", png.getvalue()[: len(png.getvalue()) // 2], "truncated")
    put("bo/empty.jpg", b"", "empty")
    put("bo/bomb.png", png_bomb(), "decompression bomb")
    put("bo/notes.txt", b"field notes", "unsupported file type")
    return expect
