"""Screenshot the review page (`reid serve`) in headless Chromium, for the README.

    python scripts/screenshot_serve.py OUT.png --index INDEX --model MODEL   # e.g. `make demo`'s
    python scripts/screenshot_serve.py OUT.png --build DIR                   # builds a small index

Starts the app on 127.0.0.1 (a free port), opens the page, queries the first built-in example
(``--example N`` for another, ``--upload PHOTO`` for a photo), waits for every candidate thumbnail and saves a PNG. Needs the
playwright Python package and Chromium (Debian's /usr/bin/chromium; REID_CHROMIUM overrides).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts import chromium  # noqa: E402


def screenshot(
    url: str, out: Path, upload: Path | None = None, example: int = 0, width: int = 1280, height: int = 900
) -> Path:
    """Open the page at ``url``, run one query, save the screenshot to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with chromium.browser() as browser:
        page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
        page.set_default_timeout(120_000)
        page.goto(url, wait_until="load")
        page.wait_for_selector("#examples img")
        if upload is not None:
            page.set_input_files("#file", str(upload))
        else:
            page.locator("#examples button").nth(example).click()
        page.wait_for_selector("#verdict[data-verdict]")
        chromium.wait_until(
            page, "[...document.images].every(i => i.complete && (i.naturalWidth > 0 || !i.src))"
        )
        page.screenshot(path=str(out), full_page=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="PNG to write")
    ap.add_argument("--index", help="index to serve (e.g. the demo's)")
    ap.add_argument("--model", help="the model package the index was built with")
    ap.add_argument("--archive", action="append", help="archive(s) for thumbnails (default: lineage)")
    ap.add_argument("--build", type=Path, help="no index at hand: build a small one in this folder")
    ap.add_argument("--upload", type=Path, help="query with this photo instead of an example")
    ap.add_argument("--example", type=int, default=0, help="which built-in example to query (0 = first)")
    ap.add_argument("--width", type=int, default=1280)
    a = ap.parse_args(argv)
    if a.index is None:
        if a.build is None:
            ap.error("give --index and --model, or --build DIR")
        from tests.servedata import build

        built = build(a.build) if not (a.build / "index" / "_manifest.json").exists() else None
        a.index, a.model = str(a.build / "index"), str(a.build / "model")
        print(f"built {built}" if built else f"reusing {a.build}", file=sys.stderr)
    elif a.model is None:
        ap.error("--model is required with --index")

    from jobs.serve import create_app, running

    app = create_app(a.index, a.model, a.archive)
    with running(app) as url:
        print(screenshot(url, a.out, a.upload, a.example, a.width), file=sys.stderr)


if __name__ == "__main__":
    main()
