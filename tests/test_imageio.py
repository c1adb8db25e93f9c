import io

import numpy as np
import pytest
from PIL import Image

from reid.images import imageio
from tests.support.images import jpeg_bytes, photo, png_bomb


def test_exif_rotation_is_applied_and_left_half_stays_identifiable():
    img = photo(96, 64)
    dec = imageio.decode(jpeg_bytes(img, exif_orientation=6))
    assert dec.ok and dec.image.size == (64, 96)  # orientation 6: rotate 90 clockwise to view
    arr = np.asarray(dec.image).astype(int)
    # the red (left) half of the stored image is now on top
    assert arr[:40, :, 0].mean() > arr[:40, :, 2].mean()
    assert (dec.width, dec.height) == (64, 96)


def test_bbox_crop_in_upright_coordinates():
    img = photo(96, 64)
    dec = imageio.decode(jpeg_bytes(img), bbox={"x": 50, "y": 10, "w": 40, "h": 30})
    assert dec.image.size == (40, 30)
    arr = np.asarray(dec.image).astype(int)
    assert arr[..., 2].mean() > arr[..., 0].mean()  # the blue right half


def test_bbox_outside_image_is_a_reason_not_an_exception():
    dec = imageio.decode(jpeg_bytes(photo()), bbox=(500, 500, 10, 10))
    assert not dec.ok and dec.reason.startswith("bad bbox")


def test_draft_mode_keeps_at_least_the_target_size():
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (768, 1024, 3), dtype=np.uint8))
    data = jpeg_bytes(big)
    dec = imageio.decode(data, target_size=96)
    assert dec.ok and min(dec.image.size) >= 96 and dec.image.size[0] < 1024
    assert (dec.width, dec.height) == (1024, 768)
    crop = imageio.decode(data, bbox=(100, 100, 400, 300), target_size=96)
    assert min(crop.image.size) >= 96 and crop.image.size[0] < 400


def test_every_mode_becomes_rgb():
    base = photo()
    for mode in ["L", "P", "RGBA", "LA", "CMYK", "I", "1"]:
        buf = io.BytesIO()
        fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode in ("I",) else "PNG")
        base.convert(mode).save(buf, format=fmt)
        dec = imageio.decode(buf.getvalue())
        assert dec.ok and dec.image.mode == "RGB", mode
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(buf, format="PNG")
    dec = imageio.decode(buf.getvalue())
    assert dec.ok and np.asarray(dec.image).min() == 255  # 16-bit white stays white


def test_failures_return_reasons():
    assert imageio.decode(b"").reason.startswith("empty")
    assert imageio.decode(b"not an image at all").reason.startswith("corrupt")
    bomb = imageio.decode(png_bomb())
    assert bomb.reason.startswith("decompression bomb") and "20000x20000" in bomb.reason
    png = io.BytesIO()
    photo().save(png, format="PNG")
    assert imageio.decode(png.getvalue()[:300]).reason.startswith("truncated")


def test_exif_capture_time():
    t = imageio.capture_time(jpeg_bytes(photo(), exif_orientation=1))
    assert t is not None and (t.year, t.month, t.day, t.hour) == (2023, 6, 1, 12)
    assert imageio.capture_time(b"junk") is None


# Region-of-interest decoding (reid.images.jpegroi): only the crop's window of a JPEG is decoded.


def _smooth_photo(w: int = 640, h: int = 480, seed: int = 3) -> Image.Image:
    """Smooth structure plus mild noise, so that decoder rounding differences stay small."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.stack(
        [128 + 90 * np.sin(xx / (17 + 9 * c) + c) * np.cos(yy / (23 + 5 * c)) for c in range(3)], -1
    )
    arr += rng.normal(0, 4, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def test_region_decoder_is_built():
    from reid.images import jpegroi

    assert jpegroi.available(), "reid/_jpegroi was not built: `make setup` (pip install -e .) builds it"


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize(
    "bbox,target",
    [
        (None, 96),
        ((37, 51, 401, 297), 96),
        ((300, 10, 120, 80), 32),
        ((5, 200, 250, 230), 224),
        ((0, 0, 17, 9), 8),
    ],
)
def test_region_decode_matches_the_full_decode(orientation, bbox, target):
    data = jpeg_bytes(_smooth_photo(), exif_orientation=orientation)
    if bbox is not None and orientation in (5, 6, 7, 8):  # upright image is 480 x 640
        bbox = (bbox[1], bbox[0], bbox[3], bbox[2])
    roi = imageio.decode(data, bbox=bbox, target_size=target)
    full = imageio.decode(data, bbox=bbox, target_size=target, roi=False)
    assert roi.ok and full.ok
    assert roi.image.size == full.image.size and (roi.width, roi.height) == (full.width, full.height)
    a, b = np.asarray(roi.image).astype(int), np.asarray(full.image).astype(int)
    # same pixels up to the decoder's rounding at the window's iMCU edges
    assert np.abs(a - b).mean() < 1.0, np.abs(a - b).mean()
    assert np.percentile(np.abs(a - b), 99) <= 8


def test_region_decode_of_grayscale_and_cmyk_jpegs():
    gray = jpeg_bytes(_smooth_photo().convert("L"))
    dec = imageio.decode(gray, bbox=(10, 10, 300, 200), target_size=64)
    full = imageio.decode(gray, bbox=(10, 10, 300, 200), target_size=64, roi=False)
    assert dec.ok and dec.image.mode == "RGB" and dec.image.size == full.image.size
    assert np.abs(np.asarray(dec.image).astype(int) - np.asarray(full.image).astype(int)).mean() < 1.0
    buf = io.BytesIO()
    _smooth_photo().convert("CMYK").save(buf, format="JPEG")
    cmyk = imageio.decode(buf.getvalue(), bbox=(10, 10, 300, 200), target_size=64)  # falls back to Pillow
    assert cmyk.ok and cmyk.image.mode == "RGB" and cmyk.image.size == (150, 100)


def test_region_decode_of_damaged_jpegs():
    data = jpeg_bytes(_smooth_photo(), quality=95)
    cut = data[: len(data) // 3]
    # the crop reaches into the missing part: Pillow's verdict on the whole file, word for word
    roi = imageio.decode(cut, bbox=(0, 300, 200, 150), target_size=64)
    assert roi.reason.startswith("truncated")
    assert roi.reason == imageio.decode(cut, bbox=(0, 300, 200, 150), target_size=64, roi=False).reason
    from reid.images import jpegroi

    _, status, msg = jpegroi.decode_window(cut, 2, (0, 150, 100, 75), fast=True)
    assert status == jpegroi.TRUNCATED and "end of JPEG" in msg
    # a crop that lies wholly above the damage is intact; ingest (roi=False) still rejects the file
    top = imageio.decode(cut, bbox=(0, 0, 200, 60), target_size=16)
    assert top.ok and top.image.size == (100, 30)
    garbage = data[:600] + bytes(range(256)) * 8
    bad = imageio.decode(garbage, bbox=(0, 300, 200, 150), target_size=64)
    assert not bad.ok and bad.reason.split(":")[0] in ("corrupt", "truncated")


def test_region_decode_of_a_progressive_jpeg():
    buf = io.BytesIO()
    _smooth_photo().save(buf, format="JPEG", quality=90, progressive=True)
    for bbox, target in (((200, 150, 300, 250), 64), ((0, 0, 640, 480), 480)):
        roi = imageio.decode(buf.getvalue(), bbox=bbox, target_size=target)
        full = imageio.decode(buf.getvalue(), bbox=bbox, target_size=target, roi=False)
        assert roi.ok and roi.image.size == full.image.size
        assert np.abs(np.asarray(roi.image).astype(int) - np.asarray(full.image).astype(int)).mean() < 1.0
