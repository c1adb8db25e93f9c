"""The HTML report escapes every value it shows: hostile ids, paths and settings stay text.

The archive and embeddings here carry script payloads in every user-controlled field (individual
and image ids, survey, camera, source path, model id, the folders' own names, the protocol's
settings); the real evaluate job writes the report, and a parser then checks that no element or
attribute of the page came from a payload, while the payloads themselves are shown as text.
"""

from __future__ import annotations

import datetime as dt
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from jobs.evaluate import EvaluateConfig, run
from reid import manifest, storage
from reid.archive import ArchiveWriter
from reid.evaluation import report
from reid.schema import conform, embeddings_schema
from tests.support.images import jpeg_bytes, photo

SCRIPT = "<script>alert(1)</script>"
ONERROR = '"><img src=x onerror=alert(1)>'
PATH_SAFE = ['"><img src=x onerror=alert(1)>', "<script>alert(1)<"]  # folder names (no slash)
DIM = 16
INDIVIDUALS = 6
PAGE_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "code", "br", "table", "tr",
    "th", "td", "div", "b", "span", "figure", "img", "figcaption",
}  # fmt: skip


def hostile(i: int) -> str:
    """A payload with a distinguishing suffix (alternating the two kinds)."""
    return f"{SCRIPT if i % 2 == 0 else ONERROR}{i}"


def write_hostile_inputs(root: Path) -> dict[str, str]:
    """An archive and its embeddings (two surveys) whose every text field is a payload."""
    surveys = [f"1{SCRIPT}", f"2{ONERROR}"]  # compare as text: the first is the earlier survey
    model_id = f"model{SCRIPT}{ONERROR}"
    rng = np.random.default_rng(0)
    rows = []
    for ind in range(INDIVIDUALS):
        centre = rng.normal(size=DIM)
        for s, survey in enumerate(surveys):
            for f in range(2):
                rows.append(
                    {
                        "image_id": f"{hostile(ind)}-{s}-{f}",
                        "individual_id": hostile(ind),
                        "survey": survey,
                        "captured_at": dt.datetime(2022 + s, 6, 1 + ind, 8, 0, tzinfo=dt.timezone.utc)
                        + dt.timedelta(days=3 * f),
                        "camera_id": f"cam{hostile(ind + f)}",
                        "vec": centre + 0.5 * rng.normal(size=DIM),
                    }
                )
    folder = root / PATH_SAFE[0] / PATH_SAFE[1]
    archive_uri, emb_uri = str(folder / "archive"), str(folder / "embeddings")
    writer = ArchiveWriter(archive_uri)
    for n, r in enumerate(rows):
        writer.add(
            {
                "image_id": r["image_id"],
                "image": jpeg_bytes(photo(48, 40, seed=n)),
                "individual_id": r["individual_id"],
                "species": f"lion{ONERROR}",
                "survey": r["survey"],
                "captured_at": r["captured_at"],
                "camera_id": r["camera_id"],
                "viewpoint": SCRIPT,
                "bbox": None,
                "source": f"{PATH_SAFE[0]}/{SCRIPT}/{r['image_id']}.jpg",
                "width": 48,
                "height": 40,
            }
        )
    writer.close()
    started = manifest.now()
    manifest.write_manifest(archive_uri, "ingest", {}, [SCRIPT], {"rows": len(rows)}, started)
    vecs = np.stack([r["vec"] for r in rows]).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    carried = ("image_id", "individual_id", "survey", "captured_at", "camera_id")
    table = pa.Table.from_pylist([{k: r[k] for k in carried} | {"model_id": model_id} for r in rows])
    table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), DIM))
    storage.write_parquet(conform(table, embeddings_schema(DIM)), storage.join(emb_uri, "part.parquet"))
    manifest.write_manifest(
        emb_uri, "embed", {"archive": archive_uri}, [archive_uri], {"embeddings": len(rows)}, started,
        model_id=model_id, dim=DIM,
    )  # fmt: skip
    split = pa.table(
        {
            "image_id": [r["image_id"] for r in rows],
            ONERROR: [SCRIPT if r["survey"] == surveys[1] else ONERROR for r in rows],
        }
    )
    split_uri = str(folder / "split.parquet")
    storage.write_parquet(split, split_uri)
    return {
        "archive": archive_uri, "embeddings": emb_uri, "split": split_uri, "cutoff": surveys[1],
        "model_id": model_id, "folder": str(folder),
    }  # fmt: skip


class PageParser(HTMLParser):
    """Every element with its attributes, and the text the page shows (entities decoded)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def check_page(page: str) -> PageParser:
    """Fail if any payload became markup: a script element, an event handler, a foreign image."""
    assert "<script" not in page.lower() and "<img src=x" not in page
    parsed = PageParser()
    parsed.feed(page)
    parsed.close()
    for tag, attrs in parsed.elements:
        assert tag in PAGE_TAGS, f"unexpected element <{tag}> {attrs}"
        for name, value in attrs.items():
            assert not name.startswith("on"), f"event handler on <{tag}>: {name}={value!r}"
            assert name in {"lang", "charset", "name", "content", "class", "id", "style", "src", "alt",
                            "width"}, f"unexpected attribute on <{tag}>: {name}={value!r}"  # fmt: skip
        if tag == "img":
            assert (attrs.get("src") or "").startswith("data:image/"), attrs
    return parsed


@pytest.fixture(scope="module")
def hostile_inputs(tmp_path_factory) -> dict[str, str]:
    return write_hostile_inputs(tmp_path_factory.mktemp("hostile"))


def test_hostile_ids_paths_and_model_id_stay_text_in_the_report(hostile_inputs, tmp_path):
    out = tmp_path / PATH_SAFE[0] / "report"
    run(
        EvaluateConfig(
            embeddings=hostile_inputs["embeddings"], out=str(out), protocol="time",
            cutoff=hostile_inputs["cutoff"], map_method="pca", examples=INDIVIDUALS,
        )
    )  # fmt: skip
    page = (out / report.REPORT).read_text()
    parsed = check_page(page)
    text = "".join(parsed.text)
    # the payloads did reach the page, as text: ids, model id, paths, the cutoff setting
    assert hostile_inputs["model_id"] in text and hostile_inputs["embeddings"] in text
    assert f"from {hostile_inputs['cutoff']} on" in text
    shown = [text.count(hostile(i)) for i in range(INDIVIDUALS)]
    assert sum(shown) >= INDIVIDUALS, shown  # individual ids under the thumbnails
    alts = [a["alt"] for tag, a in parsed.elements if tag == "img" and "thumb" in (a.get("class") or "")]
    assert len(alts) == INDIVIDUALS * 6 and all(SCRIPT in a or ONERROR in a for a in alts)  # image ids
    assert page.count("data:image/jpeg;base64,") == len(alts)  # thumbnails found through the lineage


def test_hostile_split_settings_and_archive_path_stay_text_in_the_report(hostile_inputs, tmp_path):
    missing = str(Path(hostile_inputs["folder"]) / f"no-archive{SCRIPT[:-1]}")
    out = tmp_path / "split"
    run(
        EvaluateConfig(
            embeddings=hostile_inputs["embeddings"], out=str(out), protocol="split",
            split=hostile_inputs["split"], split_column=ONERROR, query_values=[SCRIPT],
            gallery_values=[ONERROR], archive=missing, map_method="pca",
        )
    )  # fmt: skip
    page = (out / report.REPORT).read_text()
    text = "".join(check_page(page).text)
    assert f"({ONERROR} in ['{SCRIPT}'])" in text  # the protocol line names the split's column and values
    assert f"thumbnails unavailable: archive {missing}" in text
