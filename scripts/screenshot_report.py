"""Screenshot an evaluation report in headless Chromium: `python scripts/screenshot_report.py REPORT_DIR OUT.png`.

Used for the README's picture of the report. Needs the playwright Python package and a Chromium
binary (Debian's /usr/bin/chromium by default; set REID_CHROMIUM to use another).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import chromium  # noqa: E402


def shrink(path: Path, colors: int) -> None:
    """Re-save a screenshot with an adaptive palette (a third of the bytes; fine for a README)."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def screenshot(
    report: Path, out: Path, width: int = 1280, full_page: bool = True, max_height: int = 2600
) -> Path:
    """Render ``report`` (a report.html or its folder) and save a PNG screenshot to ``out``."""
    page_path = report / "report.html" if report.is_dir() else report
    if not page_path.is_file():
        raise SystemExit(
            f"error: {page_path}: no report here; run `reid evaluate EMBEDDINGS --out DIR` first"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with chromium.browser() as browser:
        page = browser.new_page(viewport={"width": width, "height": 900}, device_scale_factor=1)
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        height = min(max_height, page.evaluate("document.documentElement.scrollHeight"))
        page.set_viewport_size({"width": width, "height": int(height)})
        page.screenshot(path=str(out), full_page=False)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report_dir", type=Path, help="output folder of `reid evaluate` (or its report.html)")
    ap.add_argument("out", type=Path, help="PNG to write")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--max-height", type=int, default=2600, help="crop the page to this many pixels")
    ap.add_argument("--colors", type=int, default=256, help="palette size of the PNG (0 = full colour)")
    a = ap.parse_args(argv)
    out = screenshot(a.report_dir, a.out, a.width, max_height=a.max_height)
    if a.colors:
        shrink(out, a.colors)
    print(f"{out} ({out.stat().st_size // 1024} KiB)", file=sys.stderr)


if __name__ == "__main__":
    main()
