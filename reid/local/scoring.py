"""Global, local and fused rankings of one evaluation protocol, side by side (``reid evaluate
--keypoints``).

For each query, its shortlist is the global embedding's B best allowed candidates (the protocol's
exclusions applied, as :func:`reid.evaluation.metrics.nearest` applies them). Three rankings of
the shortlist, each followed by the rest of the global ranking:

* ``global``: by cosine (the embedding alone);
* ``local``: by verified inliers (ties keep the global order);
* ``fused``: by the mean of the two calibrated probabilities (:mod:`reid.local.calibration`).

The calibration is cross-fitted: queries are split into two folds by individual, and each
fold's rankings use the calibration fitted on the other fold's labelled shortlist pairs (bursts
left out), so no query is scored by a map fitted on its own answer.

Open set (``auroc_new``; ``baks``/``baus`` at the threshold ``reid match`` would calibrate on that
ranking's top score, 5% of known queries called new): besides queries whose individual is absent from the gallery, every known query is also
asked again with its own individual removed (leave-individual-out: the shortlist of the B best
candidates of *other* individuals); ``auroc_new`` measures how well each ranking's top score
tells those apart from the known queries' top scores. It is defined even when every query is
known (where :mod:`reid.evaluation.scoring`'s open-set figures are not).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np
from sklearn.metrics import roc_auc_score

from reid.evaluation import metrics
from reid.evaluation.data import EvalData
from reid.evaluation.exclusions import sighting_table
from reid.evaluation.protocols import Protocol
from reid.evaluation.scoring import TARGET_FALSE_NEW
from reid.local.calibration import fit
from reid.local.extract import Features
from reid.local.match import Matcher, MatcherSettings
from reid.local.rerank import burst_pairs, shortlist_inliers

__all__ = ["RANKINGS", "compare", "evaluate_features", "side_by_side"]

RANKINGS = ("global", "local", "fused")
FULL_RANKING_MAX = 4096  # galleries up to this size are ranked whole


def _ap(hits: np.ndarray, n_pos: int) -> float:
    """Average precision of a ranked list of hits, ``n_pos`` positives in all (missing ones count 0)."""
    if n_pos <= 0:
        return float("nan")
    ranks = np.flatnonzero(hits) + 1
    return float(np.sum(np.arange(1, len(ranks) + 1) / ranks) / n_pos)


def compare(
    data: EvalData,
    protocol: Protocol,
    features: Mapping[str, Features],
    shortlists: tuple[int, ...] = (50,),
    exclude=None,
    matcher: MatcherSettings | None = None,
    method: str = "isotonic",
    burst_seconds: float = 60.0,
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict:
    """``{B: {ranking: {accuracy@k, map, auroc_new}}}`` plus the pair counts, for each shortlist size."""
    q_rows, g_rows = protocol.query, protocol.gallery_rows
    loo = protocol.gallery is None
    bmax = max(shortlists)
    ql, gl = data.labels[q_rows], data.labels[g_rows]
    # the whole ranking when the gallery is small (exact mAP); else 2B + 64 deep (mAP: a lower bound,
    # positives beyond the depth count as never found)
    depth = len(g_rows) if len(g_rows) <= FULL_RANKING_MAX else min(len(g_rows), 2 * bmax + 64)
    nb = metrics.nearest(
        data.emb[q_rows],
        None if loo else data.emb[g_rows],
        k=depth if depth < len(g_rows) else len(g_rows),
        query_ids=data.ids[q_rows],
        gallery_ids=None if loo else data.ids[g_rows],
        exclude=exclude,
        query_labels=ql,
        gallery_labels=None if loo else gl,
    )
    lists, others = [], []  # per query: gallery positions (global order); those of other individuals
    for i in range(len(q_rows)):
        idx = nb.indices[i][nb.indices[i] >= 0]
        lists.append(idx)
        others.append(idx[gl[idx] != ql[i]][:bmax])
    cand = [np.unique(np.r_[lst[:bmax], oth]) for lst, oth in zip(lists, others)]
    gid = data.ids[g_rows]
    res = shortlist_inliers(list(data.ids[q_rows]), [list(gid[c]) for c in cand], features, Matcher(matcher))
    inl = [dict(zip(c.tolist(), r.tolist())) for c, r in zip(cand, res)]
    score = [dict(zip(idx.tolist(), s.tolist())) for idx, s in zip(lists, nb.scores)]
    fold = np.array([zlib.crc32(str(lab).encode()) % 2 for lab in ql])
    out: dict = {"pairs_matched": int(sum(len(c) for c in cand)), "queries": len(q_rows)}
    for b in sorted(shortlists):
        out[b] = _score_b(b, lists, others, inl, score, ql, gl, nb.n_positives, fold, method, ks,
                          _burst_mask(data, q_rows, g_rows, lists, b, burst_seconds))  # fmt: skip
    return out


def _burst_mask(data, q_rows, g_rows, lists, b, burst_seconds) -> list[np.ndarray]:
    """Per query, which of its first ``b`` candidates are of its burst (left out of calibration)."""
    qpos = np.concatenate([np.full(len(lst[:b]), i) for i, lst in enumerate(lists)]).astype(np.int64)
    gpos = np.concatenate([lst[:b] for lst in lists]).astype(np.int64)
    flat = burst_pairs(qpos, gpos, sighting_table(data, q_rows), sighting_table(data, g_rows), burst_seconds)
    return np.split(flat, np.cumsum([len(lst[:b]) for lst in lists])[:-1])


def _score_b(b, lists, others, inl, score, ql, gl, n_pos, fold, method, ks, bursts) -> dict:
    nq = len(lists)
    cos_l = [np.array([score[i][j] for j in lists[i][:b]]) for i in range(nq)]
    inl_l = [np.array([inl[i][j] for j in lists[i][:b]]) for i in range(nq)]
    same_l = [gl[lists[i][:b]] == ql[i] for i in range(nq)]
    cals = {}
    for f in (0, 1):
        train = [i for i in range(nq) if fold[i] != f] or list(range(nq))
        keep = [~bursts[i] for i in train]
        cals[f] = fit(
            np.concatenate([cos_l[i][k] for i, k in zip(train, keep)]),
            np.concatenate([inl_l[i][k] for i, k in zip(train, keep)]),
            np.concatenate([same_l[i][k] for i, k in zip(train, keep)]),
            method,
        )
    hits = {r: [] for r in RANKINGS}
    first = {r: [] for r in RANKINGS}  # gallery position of each query's top candidate
    top = {r: [] for r in RANKINGS}  # top score of the known version, then of the "new" version
    top_new = {r: [] for r in RANKINGS}
    for i in range(nq):
        cal = cals[fold[i]]
        head, tail = lists[i][:b], lists[i][b:]
        by = _orders(cos_l[i], inl_l[i], cal)
        for r in RANKINGS:
            ranked = np.r_[head[by[r][0]], tail]
            hits[r].append(gl[ranked] == ql[i])
            first[r].append(int(ranked[0]) if len(ranked) else -1)
            top[r].append(by[r][1])
        oth = others[i][:b]
        o_cos = np.array([score[i].get(j, -np.inf) for j in oth])
        o_cos = np.where(np.isfinite(o_cos), o_cos, -1.0)  # beyond the ranking depth: lowest
        o_by = _orders(o_cos, np.array([inl[i][j] for j in oth]), cal) if len(oth) else None
        for r in RANKINGS:
            top_new[r].append(o_by[r][1] if o_by else -np.inf)
    known = n_pos > 0
    result = {}
    for r in RANKINGS:
        row = {f"accuracy@{k}": float(np.mean([h[:k].any() for h in hits[r]])) for k in ks}
        row["map"] = float(np.nanmean([_ap(h, int(n)) for h, n in zip(hits[r], n_pos) if n > 0]))
        s_known = np.array(top[r])[known]
        s_new = np.r_[np.array(top[r])[~known], np.array(top_new[r])[known]]
        y = np.r_[np.zeros(len(s_known)), np.ones(len(s_new))]
        s = np.nan_to_num(np.r_[s_known, s_new], neginf=-1e9)
        row["auroc_new"] = float(roc_auc_score(y, -s)) if 0 < y.sum() < len(y) else float("nan")
        if len(s_known) and len(s_new):  # at the threshold `reid match` calibrates: 5% of known called new
            thr = float(np.sort(s_known)[int(np.floor(TARGET_FALSE_NEW * len(s_known)))])
            right = np.array([bool(h[0]) if len(h) else False for h in hits[r]])[known]
            m = metrics.open_set_metrics(
                np.r_[s_known, s_new],
                np.r_[right, np.zeros(len(s_new), bool)],
                np.r_[np.ones(len(s_known), bool), np.zeros(len(s_new), bool)],
                np.r_[ql[known], ql[~known], ql[known]],
                thr,
            )
            row.update({k: m[k] for k in ("baks", "baus", "baks_baus_gmean")})
        result[r] = row
    result["calibration"] = cals[0].to_dict()
    result["_top1"] = {r: np.array(v) for r, v in first.items()}
    return result


def _orders(cos: np.ndarray, inliers: np.ndarray, cal) -> dict[str, tuple[np.ndarray, float]]:
    """Per ranking: the shortlist order and its top score."""
    pos = np.arange(len(cos))
    loc = np.maximum(inliers, 0)
    fused = cal.fuse(cos, inliers)
    out = {"global": (pos, float(cos[0]) if len(cos) else -np.inf)}
    o = np.lexsort((pos, -loc))
    out["local"] = (o, float(loc[o[0]]) if len(o) else -np.inf)
    o = np.lexsort((pos, -fused))
    out["fused"] = (o, float(fused[o[0]]) if len(o) else -np.inf)
    return out


def evaluate_features(
    data: EvalData,
    protocol: Protocol,
    features_uri: str,
    shortlists: tuple[int, ...],
    exclude=None,
    burst_seconds: float = 60.0,
    method: str = "isotonic",
) -> dict:
    """:func:`compare` with the features of a committed ``reid keypoints`` output (only the
    protocol's images are read); JSON-ready (shortlist sizes as strings, NaN as None)."""
    from reid.local.store import FeatureStore

    rows = np.unique(np.r_[protocol.query, protocol.gallery_rows])
    store = FeatureStore(features_uri)
    feats = store.get(list(data.ids[rows]))
    result = compare(data, protocol, feats, shortlists, exclude, burst_seconds=burst_seconds, method=method)

    def clean(v):
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, float) and not np.isfinite(v):
            return None
        return v

    b = str(max(shortlists))
    examples = _examples(data, protocol, result[max(shortlists)].pop("_top1"), int(b))
    for k in shortlists:
        result[k].pop("_top1", None)
    doc = clean(result)
    doc["examples"] = examples
    doc.update(
        features=features_uri, features_id=store.features_id, images_without_features=len(rows) - len(feats)
    )
    return doc


def side_by_side(doc: dict) -> list[list[str]]:
    """Rows ``[metric, B, global, local, fused]`` of an :func:`evaluate_features` result."""
    out = []
    for b in sorted((k for k in doc if k.isdigit()), key=int):
        for metric in doc[b]["global"]:
            vals = [doc[b][r].get(metric) for r in RANKINGS]
            out.append([metric, b] + ["n/a" if v is None else f"{v:.4f}" for v in vals])
    return out


def _examples(
    data: EvalData, protocol: Protocol, top1: dict[str, np.ndarray], b: int, n: int = 4
) -> list[dict]:
    """A few queries for the report: first those the fused ranking gets right and the global one
    wrong, then those both get right; each with its fused top candidate."""
    q, g = protocol.query, protocol.gallery_rows
    ok = {r: (top1[r] >= 0) & (data.labels[g[np.maximum(top1[r], 0)]] == data.labels[q]) for r in RANKINGS}
    order = list(np.flatnonzero(ok["fused"] & ~ok["global"])) + list(
        np.flatnonzero(ok["fused"] & ok["global"])
    )
    out = []
    for i in order[:n]:
        out.append(
            {
                "query_id": str(data.ids[q[i]]),
                "candidate_id": str(data.ids[g[top1["fused"][i]]]),
                "global_candidate_id": str(data.ids[g[top1["global"][i]]])
                if top1["global"][i] >= 0
                else None,
                "individual_id": str(data.labels[q[i]]),
                "global_right": bool(ok["global"][i]),
                "shortlist": b,
            }
        )
    return out
