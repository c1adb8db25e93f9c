import io

import numpy as np
from PIL import Image

from reid import imageio
from tests.images import jpeg_bytes, photo, png_bomb


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
