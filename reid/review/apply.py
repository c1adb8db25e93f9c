"""A resolved review log applied to a build: ``reid index --reviews`` / ``reid match --reviews``.

* confirmed photos carry their reviewed identity as a label (queries and gallery neighbours alike,
  so a confirmed photo also names the photos that match it);
* merged individuals are relabelled to the one kept;
* rejected pairs are removed from the match rows, so the pair is never linked by a direct match,
  nor through the reviewed identity of one of them, nor inside a proposed new individual;
* the identities table marks confirmed photos ``basis = "confirmed"`` (what a reviewer confirmed,
  kept apart from what the model proposed), and a photo ruled out of its match that the model
  would then call new ``basis = "unresolved"``, with no identity (kept out of the capture history).
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc

from reid.review.log import find_reviews, read_reviews
from reid.review.resolve import ID_FORMAT, Resolution, resolve

__all__ = ["Reviewed", "load"]

SEP = "\x1f"


def _lookup(keys: pa.Array, mapping: dict[str, str]) -> pa.Array:
    """``mapping[key]`` per key, null where absent (vectorised)."""
    if not mapping:
        return pa.nulls(len(keys), pa.string())
    src = pa.array(list(mapping), pa.string())
    pos = pc.index_in(keys, value_set=src)
    return pa.array(list(mapping.values()), pa.string()).take(pos)


class Reviewed:
    """The labels, merges and rejections of a :class:`Resolution`, applied to Arrow tables."""

    def __init__(self, res: Resolution, source: str = "", digest: str = ""):
        self.res = res
        self.source, self.digest = source, digest
        self.labels = {k: v["individual_id"] for k, v in res.labels.items()}
        self.rejected = {a + SEP + b for a, b in res.rejected}
        self.rejected |= {a + SEP + b for a, b in res.rejected_images} | {
            b + SEP + a for a, b in res.rejected_images
        }
        for (
            a,
            b,
        ) in res.rejected_images:  # a photo ruled out is also ruled out of the other's reviewed identity
            for x, y in ((a, b), (b, a)):
                if y in self.labels:
                    self.rejected.add(x + SEP + self.labels[y])

    def separate(self, proposed: pa.Table) -> pa.Table:
        """Proposed new individuals without a rejected pair inside: of a pair grouped together
        (through other photos: direct links are already gone), the photo that sorts later leaves
        for a proposed individual of its own."""
        if not self.res.rejected_images or not len(proposed):
            return proposed
        ids = proposed.column("image_id").to_pylist()
        group = dict(zip(ids, proposed.column("proposed_individual").to_pylist(), strict=True))
        for a, b in sorted(self.res.rejected_images):
            if a in group and b in group and group[a] == group[b]:
                group[b] = "new-" + hashlib.sha1(b.encode()).hexdigest()[:12]
        names = pa.array([group[i] for i in ids], pa.string())
        return proposed.set_column(
            proposed.schema.get_field_index("proposed_individual"), "proposed_individual", names
        )

    def relabel(
        self, table: pa.Table, id_col: str = "image_id", label_col: str = "individual_id"
    ) -> pa.Table:
        """``label_col`` := reviewed identity where there is one, else the old label after merges."""
        ids = table.column(id_col).combine_chunks()
        old = table.column(label_col).combine_chunks().cast(pa.string())
        if self.res.merges:
            old = pc.coalesce(_lookup(old, {k: self.res.canonical(k) for k in self.res.merges}), old)
        new = pc.coalesce(_lookup(ids, self.labels), old)
        return table.set_column(table.schema.get_field_index(label_col), label_col, new)

    def filter_matches(self, matches: pa.Table) -> pa.Table:
        """Neighbours relabelled as :meth:`relabel`; rows of a rejected pair removed."""
        m = self.relabel(matches, "neighbor_id", "neighbor_individual_id")
        if not self.rejected:
            return m
        q = m.column("query_id").combine_chunks()
        sep = pa.scalar(SEP)
        by_ind = pc.binary_join_element_wise(
            q, m.column("neighbor_individual_id").combine_chunks().fill_null(""), sep
        )
        by_img = pc.binary_join_element_wise(q, m.column("neighbor_id").combine_chunks(), sep)
        out = pa.array(sorted(self.rejected), pa.string())
        drop = pc.or_(pc.is_in(by_ind, value_set=out), pc.is_in(by_img, value_set=out))
        return m.filter(pc.invert(drop))

    def mark(self, identities: pa.Table) -> pa.Table:
        """Identities with reviewed photos set to their confirmed identity, basis ``confirmed``.

        A photo a reviewer ruled out of an individual that the model then leaves as a new one
        (nothing else above the threshold) is ``unresolved``, without an identity: a rejection says
        what the animal is not, so it is kept out of the capture history rather than counted as
        an individual nobody declared."""
        ids = identities.column("image_id").combine_chunks()
        confirmed = _lookup(ids, self.labels)
        old_basis = identities.column("basis").combine_chunks()
        ruled_out = pc.is_in(ids, value_set=pa.array(sorted({q for q, _ in self.res.rejected}), pa.string()))
        unresolved = pc.and_(
            pc.and_(ruled_out, pc.is_null(confirmed)), pc.equal(old_basis, "new").fill_null(False)
        )
        ident = pc.coalesce(confirmed, identities.column("identity").combine_chunks())
        ident = pc.if_else(unresolved, pa.scalar(None, pa.string()), ident)
        basis = pc.if_else(pc.is_valid(confirmed), pa.scalar("confirmed"), old_basis)
        basis = pc.if_else(unresolved, pa.scalar("unresolved"), basis)
        t = identities.set_column(identities.schema.get_field_index("identity"), "identity", ident)
        return t.set_column(t.schema.get_field_index("basis"), "basis", basis)

    def lineage(self) -> dict:
        """What the manifest records about the reviews a build used."""
        return {"uri": self.source, "digest": self.digest, **self.res.counts}


def load(uri: str, id_format: str = ID_FORMAT) -> Reviewed:
    """Read and resolve the decisions a ``--reviews DIR`` names (refuses a DIR without any)."""
    reviews = read_reviews("", folder=find_reviews(uri))
    ids = reviews.column("review_id").to_pylist()
    digest = hashlib.sha1(json.dumps([ids, id_format]).encode()).hexdigest()[:16]
    return Reviewed(resolve(reviews, id_format), uri, digest)
