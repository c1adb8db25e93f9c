"""Screenshot the review page (`reid serve`) in headless Chromium, for the README.

    python scripts/screenshot_serve.py OUT.png --index INDEX --model MODEL   # e.g. `make demo`'s
    python scripts/screenshot_serve.py OUT.png --build DIR                   # builds a small index
    python scripts/screenshot_serve.py OUT.png --review --build DIR          # the review queue too

``--review`` opens the review queue (``/review``, ``--matches MATCHES`` or the one ``--build``
makes): OUT is the queue page, OUT-view.png the review view with both photos zoomed in.

Starts the app on 127.0.0.1 (a free port), opens the page, queries the first built-in example
(``--example N`` for another, ``--upload PHOTO`` for a photo), waits for every candidate thumbnail and saves a PNG. Needs the
playwright Python package and Chromium (Debian's /usr/bin/chromium; REID_CHROMIUM overrides).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
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


def screenshot_review(url: str, out: Path, width: int = 1400, height: int = 1000) -> tuple[Path, Path]:
    """The review queue page (``out``) and its review view, zoomed in (``out``-view.png)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    view_png = out.with_name(out.stem + "-view.png")
    with chromium.browser() as browser:
        page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
        page.set_default_timeout(120_000)
        page.goto(url + "/review", wait_until="load")
        page.wait_for_selector("#view[data-item-id]")
        page.fill("#reviewer", "ana")
        page.click("h1")  # keys are shortcuts again
        for _ in range(20):  # the first item that has a candidate to compare with
            if page.get_attribute("#img-cand", "src"):
                break
            page.keyboard.press("ArrowDown")
        chromium.wait_until(
            page, "[...document.images].every(i => i.complete && (i.naturalWidth > 0 || !i.src))"
        )
        page.screenshot(path=str(out), full_page=True)
        box = page.locator("#zoom-query").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5)
        for _ in range(3):
            page.mouse.wheel(0, -120)
            page.wait_for_timeout(100)
        page.locator("#view").screenshot(path=str(view_png))
    return out, view_png


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
    ap.add_argument("--review", action="store_true", help="screenshot the review queue (/review) instead")
    ap.add_argument("--matches", help="with --review: the `reid match` output whose queue is shown")
    a = ap.parse_args(argv)
    if a.index is None:
        if a.build is None:
            ap.error("give --index and --model, or --build DIR")
        from tests.support.servedata import build

        built = build(a.build) if not (a.build / "index" / "_manifest.json").exists() else None
        a.index, a.model = str(a.build / "index"), str(a.build / "model")
        print(f"built {built}" if built else f"reusing {a.build}", file=sys.stderr)
        if a.review:
            from tests.support.servedata import build_review

            served = {k: str(a.build / k) for k in ("archive", "model", "embeddings", "index")}
            rdir = a.build / "review"
            if not (rdir / "matches" / "_manifest.json").exists():
                shutil.rmtree(rdir, ignore_errors=True)
                build_review(rdir, served)
            a.index, a.matches = str(rdir / "index"), str(rdir / "matches")
    elif a.model is None:
        ap.error("--model is required with --index")

    from jobs.serve import create_app, running

    if a.review:
        if not a.matches:
            ap.error("--review needs --matches MATCHES (or --build DIR)")
        with tempfile.TemporaryDirectory() as reviews:  # the screenshot's decisions go nowhere
            app = create_app(a.index, a.model, a.archive, matches=a.matches, reviews=reviews)
            with running(app) as url:
                print(screenshot_review(url, a.out, max(a.width, 1400)), file=sys.stderr)
        return
    app = create_app(a.index, a.model, a.archive)
    with running(app) as url:
        print(screenshot(url, a.out, a.upload, a.example, a.width), file=sys.stderr)


if __name__ == "__main__":
    main()
