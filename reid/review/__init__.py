"""Reviews: what people decided about the model's matches, and how a build applies it.

``log``      the append-only decision log (one JSON object per decision, next to the index)
``resolve``  the log -> labels, minted ids, rejected pairs, merges and conflicts (several reviewers)
``apply``    a resolution applied to a match run's queries and matches (``reid match/index --reviews``)
``queue``    the decisions a match output needs from a person, ordered by impact (``reid serve``)
"""

from reid.review.log import (
    ASSIGNING,
    DECISIONS,
    LABELS_SCHEMA,
    REVIEW_SCHEMA,
    REVIEWS,
    confirmed_labels,
    find_reviews,
    new_individual_name,
    read_reviews,
    record,
    rejected_pairs,
    reviews_uri,
)

__all__ = [
    "ASSIGNING",
    "DECISIONS",
    "LABELS_SCHEMA",
    "REVIEWS",
    "REVIEW_SCHEMA",
    "confirmed_labels",
    "find_reviews",
    "new_individual_name",
    "read_reviews",
    "record",
    "rejected_pairs",
    "reviews_uri",
]
