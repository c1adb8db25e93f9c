"""The evaluation report renders in headless Chromium: tables, plots and thumbnails all present."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.evaluate import EvaluateConfig, run
from scripts import chromium
from tests.support.evalset import make_eval_inputs

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not chromium.available(), reason=chromium.MISSING),
]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    inputs = make_eval_inputs(root)
    out = root / "report"
    run(
        EvaluateConfig(
            embeddings=inputs["embeddings"],
            out=str(out),
            protocol="time",
            cutoff="2023",
            map_method="pca",
            examples=8,
        )
    )
    return out


def test_report_renders_with_every_plot_table_and_thumbnail(report_dir):
    pytest.importorskip("playwright.sync_api")
    doc = json.loads((report_dir / "metrics.json").read_text())
    requests: list[str] = []
    with chromium.browser() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((report_dir / "report.html").as_uri(), wait_until="load")
        assert page.title().startswith("Re-identification evaluation")

        rows = page.eval_on_selector_all(
            "#metrics tr", "rs => rs.map(r => [r.cells[0].innerText, r.cells[1].innerText])"
        )
        table = dict(rows)
        for key in ("accuracy@1", "accuracy@5", "accuracy@10", "map", "baks", "baus", "baks_baus_gmean"):
            assert table[key] == f"{doc[key]:.4f}", key

        for plot in ("#plot-accuracy", "#plot-map", "#plot-scores"):
            size = page.eval_on_selector(plot, "i => [i.complete, i.naturalWidth, i.naturalHeight]")
            assert size[0] and size[1] > 200 and size[2] > 150, (plot, size)
            assert page.is_visible(plot)

        examples = page.eval_on_selector_all("#examples tr", "rs => rs.length")
        assert examples == 1 + 8  # header + example queries
        thumbs = page.eval_on_selector_all(
            "#examples img.thumb", "is => is.map(i => i.complete && i.naturalWidth > 0)"
        )
        assert len(thumbs) == 8 * 6 and all(thumbs)  # query + top-5 candidates, every image decoded
        marks = page.eval_on_selector_all("#examples .cand.ok, #examples .cand.bad", "cs => cs.length")
        assert marks == 8 * 5
        assert not errors
    # self-contained: the page itself is the only thing fetched (images are data: URIs)
    assert [u for u in requests if not u.startswith("data:")] == [(report_dir / "report.html").as_uri()]


def test_screenshot_script(report_dir, tmp_path):
    pytest.importorskip("playwright.sync_api")
    out = tmp_path / "shot.png"
    r = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "screenshot_report.py"), str(report_dir), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    from PIL import Image

    with Image.open(out) as img:
        assert img.width == 1280 and img.height > 1000
        assert len(set(img.convert("L").resize((64, 64)).getdata())) > 20  # not a blank page
