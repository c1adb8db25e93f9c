"""An archive's labels: the metadata columns of every row (no image bytes) and its labelled rows."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from reid import archive

__all__ = ["LABEL_COLUMNS", "images_per_individual", "labeled", "read_labels"]

LABEL_COLUMNS = ["image_id", "individual_id", "viewpoint", "survey", "camera_id", "captured_at"]


def read_labels(archive_uri: str) -> pa.Table:
    """The metadata columns of every archive row (no image bytes are read)."""
    return archive.read_archive(archive_uri, columns=LABEL_COLUMNS)


def labeled(table: pa.Table) -> pa.Table:
    """Rows whose individual is known (unknown individuals cannot be trained or validated on)."""
    return table.filter(pc.is_valid(table.column("individual_id")))


def images_per_individual(table: pa.Table) -> dict[str, int]:
    counts = pc.value_counts(table.column("individual_id")).to_pylist()
    return {c["values"]: c["counts"] for c in counts if c["values"] is not None}
