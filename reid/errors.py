"""User-facing errors: what input, what was wrong, what to do. The CLI prints them as one line."""


class ReidError(Exception):
    """An error caused by the user's input or configuration (not a bug)."""


class SchemaError(ReidError):
    """A table does not follow one of the data contracts (archive, embeddings, matches)."""


class ConfigError(ReidError):
    """A job configuration is invalid; raised before any work starts."""
