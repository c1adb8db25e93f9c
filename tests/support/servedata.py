"""A small served index built by the real jobs (synth -> embed -> index), shared by the serve tests.

The model is an untrained (random-init) resnet10t: it cannot tell two synthetic animals of the
same species apart, so the tests do not pretend it can. Instead:

* the *known* photo is a lossless crop of an archive image, exactly as the embed job cropped and
  decoded it: same pixels, same embedding, score ~1.0, ranked first;
* the *new* photo is a synthetic animal drawn here in colours no archive photo has (a blue scene,
  a magenta coat): even a random network puts it below the index's calibrated threshold.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

INPUT_SIZE = 64


def build(root: Path) -> dict[str, str]:
    """Write ``root/{archive,model,embeddings,index}``; returns their paths."""
    import torch

    from cluster.runtime import shutdown
    from jobs.embed import EmbedConfig
    from jobs.embed import run as embed
    from jobs.index import IndexConfig
    from jobs.index import run as index
    from jobs.synth import SynthJobConfig
    from jobs.synth import run as synth
    from reid.model.network import create_model
    from reid.model.package import save_package
    from reid.model.spec import ModelSpec

    paths = {k: str(root / k) for k in ("archive", "model", "embeddings", "index")}
    synth(SynthJobConfig(out=paths["archive"], individuals=8, years=2, images_per_individual=3,
                         image_size=96, seed=3))  # fmt: skip
    torch.manual_seed(0)
    spec = ModelSpec(backbone="resnet10t", embedding_dim=32, input_size=INPUT_SIZE)
    save_package(create_model(spec, load_pretrained=False), spec, paths["model"])
    try:
        embed(EmbedConfig(archive=paths["archive"], model=paths["model"], out=paths["embeddings"],
                          num_cpus=2, threads=1))  # fmt: skip
        index(IndexConfig(embeddings=[paths["embeddings"]], out=paths["index"], num_cpus=2))
    finally:
        shutdown()
    return paths


def known_photo(archive_uri: str, labelled: bool = True) -> tuple[str, str | None, bytes]:
    """(image_id, individual_id, PNG bytes): an archive photo cropped exactly as the embed job did."""
    from reid import archive
    from reid.images import imageio

    for row in archive.iter_rows(archive_uri, columns=["image_id", "image", "bbox", "individual_id"]):
        if labelled and row["individual_id"] is None:
            continue
        dec = imageio.decode(row["image"], row["bbox"], target_size=INPUT_SIZE)
        buf = io.BytesIO()
        dec.image.save(buf, format="PNG")
        return row["image_id"], row["individual_id"], buf.getvalue()
    raise AssertionError(f"{archive_uri}: no labelled image")


def new_animal_photo(
    seed: int = 0, size: int = 160, shot: int = 0, coat: tuple = (230, 40, 200), scene: tuple = (40, 60, 200)
) -> bytes:
    """A synthetic four-legged animal with a spotted magenta coat in a blue scene (JPEG bytes).
    ``seed`` is the animal (its spots); ``shot`` another photo of it (other sensor noise)."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), scene)
    d = ImageDraw.Draw(img)
    s = size / 100
    d.ellipse((20 * s, 35 * s, 75 * s, 65 * s), fill=coat)  # body
    d.ellipse((68 * s, 25 * s, 88 * s, 45 * s), fill=coat)  # head
    for x in (25, 35, 58, 68):  # legs
        d.rectangle((x * s, 58 * s, (x + 5) * s, 85 * s), fill=coat)
    for _ in range(14):  # spots: this individual's pattern
        x, y = rng.uniform(24, 70) * s, rng.uniform(38, 60) * s
        d.ellipse((x, y, x + 5 * s, y + 5 * s), fill=(25, 20, 30))
    noise = rng if shot == 0 else np.random.default_rng((seed, shot))
    arr = np.asarray(img, dtype=np.float32) + noise.normal(0, 6, (size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def build_review(root: Path, served: dict[str, str]) -> dict[str, str]:
    """A match output to review, like a new season's batch on top of the served archive.

    The batch (survey 2023, unlabelled): two photos of one new animal and one of another (coat
    colours no archive photo has, so even the untrained model calls them new; the two shots of
    the first one group into one proposed individual), and an archive photo copied with a few
    pixels changed (matched to its individual). Embedded with the served model, indexed with
    the served embeddings, matched all-vs-all with the same camera and day excluded.
    """
    from cluster.runtime import shutdown
    from jobs.embed import EmbedConfig
    from jobs.embed import run as embed
    from jobs.index import IndexConfig
    from jobs.index import run as index
    from jobs.ingest import IngestConfig
    from jobs.ingest import run as ingest
    from jobs.match import MatchConfig
    from jobs.match import run as match

    folder = root / "photos" / "unknown"
    folder.mkdir(parents=True)
    (folder / "stranger-a1.jpg").write_bytes(new_animal_photo(seed=21, shot=1))
    (folder / "stranger-a2.jpg").write_bytes(new_animal_photo(seed=21, shot=2))
    (folder / "stranger-b.jpg").write_bytes(
        new_animal_photo(seed=22, coat=(40, 200, 60), scene=(230, 120, 20))
    )
    _, _, data = known_photo(served["archive"])
    pixels = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    pixels[0, :4] ^= 1  # another file, (nearly) the same picture
    Image.fromarray(pixels).save(folder / "resighting.png")
    paths = {k: str(root / k) for k in ("batch", "batch_embeddings", "index", "matches")}
    paths["model"] = served["model"]
    try:
        ingest(IngestConfig(src=str(root / "photos"), out=paths["batch"], survey="2023"))
        embed(EmbedConfig(archive=paths["batch"], model=served["model"], out=paths["batch_embeddings"],
                          num_cpus=2, threads=1))  # fmt: skip
        index(IndexConfig(embeddings=[served["embeddings"], paths["batch_embeddings"]], out=paths["index"],
                          num_cpus=2))  # fmt: skip
        match(MatchConfig(index=paths["index"], out=paths["matches"], k=10, exclude_same_camera_day=True,
                          num_cpus=2))  # fmt: skip
    finally:
        shutdown()
    return paths


def hand_made_matches(root: Path) -> str:
    """A small all-vs-all match output written by hand (``root/matches``): labelled l1-l3 (A, A, B),
    unlabelled u1-u3 (matched), u4-u5 (one proposed new individual), over surveys 2021-2023."""
    import datetime as dt

    import pyarrow as pa

    from reid import manifest, matching, storage

    out = str(root / "matches")
    at = lambda d: dt.datetime.fromisoformat(d + "T10:00:00+00:00")  # noqa: E731
    queries = pa.table({
        "image_id": ["l1", "l2", "l3", "u1", "u2", "u3", "u4", "u5"],
        "individual_id": pa.array(["A", "A", "B", None, None, None, None, None], pa.string()),
        "survey": ["2021", "2021", "2021", "2022", "2022", "2022", "2023", "2023"],
        "captured_at": [at("2021-05-01"), at("2021-05-02"), at("2021-06-01"), at("2022-05-01"),
                        at("2022-05-01"), at("2022-07-01"), at("2023-03-01"), at("2023-03-02")],
        "camera_id": ["c1", "c1", "c2", "c1", "c1", "c2", "c3", "c3"],
    })  # fmt: skip
    decisions = pa.table({
        "query_id": queries["image_id"],
        "predicted_individual": ["A", "B", "B", "A", "A", "B", "A", "A"],
        "score": pa.array([0.99, 0.95, 0.97, 0.8, 0.85, 0.97, 0.3, 0.2], pa.float32()),
        "is_new": [False, False, False, False, False, False, True, True],
        "survey": queries["survey"], "individual_id": queries["individual_id"],
    }, schema=matching.DECISIONS_SCHEMA)  # fmt: skip
    proposed = pa.table({"image_id": ["u4", "u5"], "proposed_individual": ["new-abc", "new-abc"]},
                        schema=matching.PROPOSED_SCHEMA)  # fmt: skip
    identities = pa.table({"image_id": queries["image_id"], "survey": queries["survey"],
                           "identity": ["A", "A", "B", "A", "A", "B", "new-abc", "new-abc"],
                           "basis": ["label"] * 3 + ["match"] * 3 + ["new"] * 2})  # fmt: skip
    matches = pa.table({
        "query_id": ["u1", "u1", "u2", "u3", "u4", "l2"], "neighbor_id": ["l1", "u3", "l1", "l3", "l1", "l3"],
        "rank": pa.array([1, 2, 1, 1, 1, 1], pa.int32()), "score": [0.8, 0.7, 0.85, 0.97, 0.3, 0.95],
        "neighbor_individual_id": pa.array(["A", None, "A", "B", "A", "B"], pa.string()),
    })  # fmt: skip
    for name, t in [("decisions", decisions), ("new_individuals", proposed), ("identities", identities)]:
        storage.write_parquet(t, storage.join(out, f"{name}.parquet"))
    storage.write_parquet(queries, storage.join(out, "queries", "part-00000.parquet"))
    storage.write_parquet(matches, storage.join(out, "matches", "part-00000.parquet"))
    manifest.write_manifest(out, "match", {}, [], {}, manifest.now(), threshold=0.5)
    return out


def png(w: int, h: int) -> bytes:
    """A flat-coloured PNG of ``w`` x ``h`` pixels: a few KB of file for any number of pixels."""
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (90, 120, 60)).save(buf, format="PNG")
    return buf.getvalue()


def files_under(root: str) -> dict[str, int]:
    """Every file under ``root`` (path -> size); {} when it does not exist."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            out[os.path.join(d, n)] = os.path.getsize(os.path.join(d, n))
    return out


def review_files(index: str) -> dict[str, int]:
    """The decisions stored next to ``index`` (``INDEX/_reviews``), path -> size."""
    return files_under(os.path.join(index, "_reviews"))
