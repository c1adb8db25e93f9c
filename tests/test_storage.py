import json

import pyarrow as pa
import pytest

from reid import archive, manifest, schema, storage
from reid.errors import ReidError, SchemaError


def test_resolve_local_and_file_uri(tmp_path):
    fs, path = storage.resolve(f"file://{tmp_path}/x")
    assert path == f"{tmp_path}/x"
    with pytest.raises(ReidError, match="unsupported URI scheme 'nosuchfs'"):
        storage.resolve("nosuchfs://bucket/x")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = str(tmp_path / "d" / "f.bin")
    storage.write_bytes(target, b"abc")
    storage.write_bytes(target, b"xyz")
    assert storage.read_bytes(target) == b"xyz"
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["f.bin"]


def test_manifest_scrubs_secrets_and_records_lineage(tmp_path):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    manifest.write_manifest(src, "ingest", {}, [], {"rows": 3}, manifest.now())
    m = manifest.write_manifest(
        out,
        "embed",
        {"aws_secret_access_key": "s3cr3t", "nested": {"api_token": "t"}, "k": 1},
        [src],
        {"rows": 3},
        manifest.now(),
    )
    text = (tmp_path / "out" / "_manifest.json").read_text()
    assert "s3cr3t" not in text and '"t"' not in text
    assert json.loads(text)["config"]["k"] == 1
    assert m["inputs"][0]["job"] == "ingest" and m["inputs"][0]["counts"] == {"rows": 3}
    with pytest.raises(ReidError, match="did not finish"):
        (tmp_path / "half").mkdir()
        manifest.require_manifest(str(tmp_path / "half"))
    with pytest.raises(ReidError, match="expected the output of `reid train`"):
        manifest.require_manifest(out, job="train")


def _archive_table(ids):
    rows = [{"image_id": i, "image": b"x", "individual_id": "a"} for i in ids]
    return schema.conform(pa.Table.from_pylist(rows, schema=schema.ARCHIVE_SCHEMA), schema.ARCHIVE_SCHEMA)


def test_archive_validation_names_file_and_column(tmp_path):
    good = _archive_table(["a", "b"])
    storage.write_parquet(good.drop_columns(["survey"]), str(tmp_path / "a" / "p.parquet"))
    with pytest.raises(SchemaError, match=r"p\.parquet: archive column 'survey' is missing"):
        archive.read_archive(str(tmp_path / "a"))
    bad_type = good.set_column(good.schema.get_field_index("width"), "width", pa.array(["1", "2"]))
    storage.write_parquet(bad_type, str(tmp_path / "b" / "p.parquet"))
    with pytest.raises(SchemaError, match="'width' has type string, expected int32"):
        archive.read_archive(str(tmp_path / "b"))
    storage.write_parquet(_archive_table(["a", "b"]), str(tmp_path / "c" / "p1.parquet"))
    storage.write_parquet(_archive_table(["b"]), str(tmp_path / "c" / "p2.parquet"))
    with pytest.raises(SchemaError, match="duplicate image_id 'b'"):
        archive.read_archive(str(tmp_path / "c"))


def test_embeddings_validation():
    t = pa.table({"image_id": ["a"], "embedding": pa.array([[0.1, 0.2]], pa.list_(pa.float32()))})
    with pytest.raises(SchemaError, match="fixed_size_list"):
        schema.validate_embeddings(t, "emb")
    full = schema.conform(
        pa.table(
            {
                "image_id": ["a"],
                "model_id": ["m"],
                "embedding": pa.array([[0.6, 0.8]], pa.list_(pa.float32(), 2)),
            }
        ),
        schema.embeddings_schema(2),
    )
    assert schema.validate_embeddings(full, "emb") == 2


@pytest.mark.s3
def test_s3_roundtrip(s3_bucket):
    uri = f"{s3_bucket}/p/q.bin"
    storage.write_bytes(uri, b"hello")
    assert storage.exists(uri) and storage.read_bytes(uri) == b"hello"
    storage.write_parquet(_archive_table(["z"]), f"{s3_bucket}/arch/part-1.parquet")
    storage.write_bytes(f"{s3_bucket}/arch/_rejects.parquet", b"not parquet")
    assert storage.list_files(f"{s3_bucket}/arch") == [f"{s3_bucket}/arch/part-1.parquet"]
    assert archive.read_archive(f"{s3_bucket}/arch").column("image_id").to_pylist() == ["z"]
    with pytest.raises(ReidError, match="not found"):
        storage.read_bytes(f"{s3_bucket}/missing")
