"""The data contracts of DESIGN.md, one place each: archive, rejects, embeddings, matches.

Every reader validates what it reads and names the file and column at fault.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from reid.errors import SchemaError

MAX_ROW_BYTES = 10 * 1024 * 1024  # rows (encoded images) of 10 MB or more are refused

BBOX_TYPE = pa.struct([("x", pa.float32()), ("y", pa.float32()), ("w", pa.float32()), ("h", pa.float32())])

ARCHIVE_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("individual_id", pa.string()),
        pa.field("species", pa.string()),
        pa.field("survey", pa.string()),
        pa.field("captured_at", pa.timestamp("us", tz="UTC")),
        pa.field("camera_id", pa.string()),
        pa.field("viewpoint", pa.string()),
        pa.field("bbox", BBOX_TYPE),
        pa.field("source", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        # One row per annotation: the photo's own id, shared by every animal boxed in it, so
        # exclusions of one photo (or burst) still work; the user's own annotation id, if any.
        pa.field("photo_id", pa.string()),
        pa.field("annotation_id", pa.string()),
        # The user's own id of the photo, if the source has one (COCO image id, Camtrap DP mediaID).
        pa.field("photo_ref", pa.string()),
    ]
)
ARCHIVE_COLUMNS = ARCHIVE_SCHEMA.names
# Columns added after archives were first written: absent in older files, which still read
# (readers fill ``photo_id`` with ``image_id`` there: one annotation per photo).
OPTIONAL_ARCHIVE_COLUMNS = ("photo_id", "annotation_id", "photo_ref")
# Metadata carried from the archive into embeddings (and on to matches).
CARRIED_COLUMNS = ["individual_id", "survey", "captured_at", "camera_id", "viewpoint"]
# Carried into embeddings too, but optional there (older embeddings lack it).
OPTIONAL_CARRIED_COLUMNS = ("photo_id",)

# Names that mean "no individual" in any input (folder names, manifest cells), compared after
# strip() and lower(): wildlife-datasets writes "unknown"; spreadsheets write "", "-", "NA", "nan".
UNLABELLED_NAMES = frozenset(
    {
        "",
        "unknown",
        "_unknown",
        "unidentified",
        "unlabeled",
        "unlabelled",
        "none",
        "null",
        "nan",
        "na",
        "n/a",
        "-",
        "--",
        "?",
    }
)


def individual_or_none(name: object) -> str | None:
    """The individual named by ``name``, or None when it is missing or means unlabelled.

    The one rule for every input format (folders, CSV, JSON): see ``UNLABELLED_NAMES``.
    """
    if name is None:
        return None
    text = str(name).strip()
    return None if text.lower() in UNLABELLED_NAMES else text


REJECTS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("reason", pa.string()),
    ]
)


def embeddings_schema(dim: int) -> pa.Schema:
    fields = [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
    ]
    fields += [ARCHIVE_SCHEMA.field(c) for c in (*CARRIED_COLUMNS, *OPTIONAL_CARRIED_COLUMNS)]
    return pa.schema(fields)


MATCHES_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("neighbor_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
    ]
)


def check_fields(
    schema: pa.Schema, expected: pa.Schema, source: str, what: str, optional: tuple[str, ...] = ()
) -> None:
    """Refuse a ``schema`` missing a column of ``expected`` (``optional`` ones may be absent) or
    holding one of another type (loss-free variants accepted); ``what`` names the table kind."""
    for field in expected:
        if field.name not in schema.names and field.name in optional:
            continue
        if field.name not in schema.names:
            raise SchemaError(
                f"{source}: {what} column {field.name!r} is missing (found: {', '.join(schema.names)})"
            )
        got = schema.field(field.name).type
        if got != field.type and not _compatible(got, field.type):
            raise SchemaError(f"{source}: {what} column {field.name!r} has type {got}, expected {field.type}")


def _compatible(got: pa.DataType, want: pa.DataType) -> bool:
    """Loss-free variants a reader accepts: large_string/large_binary, any timestamp unit/zone."""
    if pa.types.is_timestamp(want) and pa.types.is_timestamp(got):
        return True
    if pa.types.is_string(want) and (pa.types.is_large_string(got) or pa.types.is_null(got)):
        return True
    if pa.types.is_binary(want) and pa.types.is_large_binary(got):
        return True
    if pa.types.is_struct(want) and pa.types.is_null(got):
        return True
    return False


def check_unique(table: pa.Table, column: str, source: str) -> None:
    ids = table.column(column)
    if ids.null_count:
        raise SchemaError(f"{source}: column {column!r} has {ids.null_count} null values")
    n_unique = pc.count_distinct(ids).as_py()
    if n_unique != len(ids):
        counts = pc.value_counts(ids)
        dup = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
        raise SchemaError(
            f"{source}: duplicate {column} {dup!r} ({len(ids) - n_unique} duplicates in all); "
            f"{column} must be unique"
        )


def validate_archive(table_or_schema: pa.Table | pa.Schema, source: str) -> None:
    """Refuse an archive table with a missing column, a wrong type or a duplicate ``image_id``."""
    schema = table_or_schema if isinstance(table_or_schema, pa.Schema) else table_or_schema.schema
    check_fields(schema, ARCHIVE_SCHEMA, source, "archive", OPTIONAL_ARCHIVE_COLUMNS)
    if isinstance(table_or_schema, pa.Table):
        check_unique(table_or_schema, "image_id", source)


def validate_embeddings(table_or_schema: pa.Table | pa.Schema, source: str) -> int:
    """Validate an embeddings table; returns the embedding dimension."""
    schema = table_or_schema if isinstance(table_or_schema, pa.Schema) else table_or_schema.schema
    if "embedding" not in schema.names:
        raise SchemaError(f"{source}: embeddings column 'embedding' is missing")
    etype = schema.field("embedding").type
    if not pa.types.is_fixed_size_list(etype) or etype.value_type != pa.float32():
        raise SchemaError(
            f"{source}: column 'embedding' has type {etype}, expected fixed_size_list<float32>[d]"
        )
    check_fields(schema, embeddings_schema(etype.list_size), source, "embeddings", OPTIONAL_CARRIED_COLUMNS)
    if isinstance(table_or_schema, pa.Table):
        check_unique(table_or_schema, "image_id", source)
    return etype.list_size


def validate_matches(table_or_schema: pa.Table | pa.Schema, source: str) -> None:
    schema = table_or_schema if isinstance(table_or_schema, pa.Schema) else table_or_schema.schema
    check_fields(schema, MATCHES_SCHEMA, source, "matches")


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast/reorder a table to ``schema`` (adding all-null columns the table lacks)."""
    cols = []
    for field in schema:
        if field.name in table.column_names:
            cols.append(table.column(field.name).cast(field.type))
        else:
            cols.append(pa.nulls(len(table), field.type))
    return pa.Table.from_arrays(cols, schema=schema)
