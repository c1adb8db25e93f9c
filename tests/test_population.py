"""reid.search.population: identities, per-survey counts, capture histories (checked against a simulation)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from reid.search import population


def decisions(rows):
    names = ["query_id", "predicted_individual", "score", "is_new", "survey", "individual_id"]
    return pa.Table.from_pylist([dict(zip(names, r, strict=True)) for r in rows])


def test_identity_is_label_then_match_then_proposed():
    dec = decisions(
        [
            ("i1", "B", 0.9, False, "2021", "A"),  # labelled: label wins
            ("i2", "B", 0.9, False, "2021", None),  # matched
            ("i3", "B", 0.2, True, "2022", None),  # new: proposed group
            ("i4", None, None, True, "2022", None),  # new, never grouped
        ]
    )
    proposed = pa.table({"image_id": ["i3"], "proposed_individual": ["new-x"]})
    ids = population.assign_identities(dec, proposed).to_pylist()
    assert [r["identity"] for r in ids] == ["A", "B", "new-x", None]
    assert [r["basis"] for r in ids] == ["label", "match", "new", None]
    blind = population.assign_identities(dec, proposed, use_labels=False).column("identity").to_pylist()
    assert blind[0] == "B"


def test_counts_and_capture_history():
    identities = pa.table(
        {
            "image_id": [f"i{j}" for j in range(8)],
            "survey": ["2021", "2021", "2022", "2022", "2023", "2023", "2023", None],
            "identity": ["A", "B", "A", "C", "A", "C", "C", "A"],
            "basis": ["label", "match", "confirmed", "new", "match", "match", "confirmed", "label"],
        }
    )
    counts = population.survey_counts(identities).to_pylist()
    assert counts == [
        {"survey": "2021", "images": 2, "seen": 2, "resighted": 0, "new": 2, "seen_confirmed": 1},
        {"survey": "2022", "images": 2, "seen": 2, "resighted": 1, "new": 1, "seen_confirmed": 1},
        {"survey": "2023", "images": 3, "seen": 2, "resighted": 2, "new": 0, "seen_confirmed": 1},
    ]
    ch = population.capture_history(identities)
    assert ch.column_names == ["individual", "2021", "2022", "2023", "ch", "ch_confirmed"]
    confirmed = dict(
        zip(ch.column("individual").to_pylist(), ch.column("ch_confirmed").to_pylist(), strict=True)
    )
    assert confirmed == {"A": "110", "B": "000", "C": "001"}  # what people established, apart
    assert dict(zip(ch.column("individual").to_pylist(), ch.column("ch").to_pylist(), strict=True)) == {
        "A": "111",
        "B": "100",
        "C": "011",
    }
    assert population.to_mark_inp(ch).splitlines()[0] == "/* A */ 111 1;"
    csv = population.to_csv(ch).splitlines()
    assert csv[0] == '"individual","2021","2022","2023","ch","ch_confirmed"' and len(csv) == 4
    empty = population.capture_history(identities.slice(0, 0))
    assert len(empty) == 0 and len(population.survey_counts(identities.slice(0, 0))) == 0


def test_history_matches_a_simulated_population():
    """An open population simulated over 4 surveys: counts agree with the simulation exactly."""
    rng = np.random.default_rng(1)
    alive = set(range(40))
    nxt, rows, truth = 40, [], {}
    for y, survey in enumerate(["2020", "2021", "2022", "2023"]):
        for a in sorted(alive):
            if rng.random() < 0.8:
                truth.setdefault(a, ["0"] * 4)[y] = "1"
                rows += [(f"{survey}-{a}-{j}", survey, f"ind{a}") for j in range(rng.integers(1, 5))]
        alive = {a for a in alive if rng.random() < 0.8} | set(range(nxt, nxt + 8))
        nxt += 8
    identities = pa.table(
        dict(zip(["image_id", "survey", "identity"], map(list, zip(*rows, strict=True)), strict=True))
    )
    ch = population.capture_history(identities)
    got = dict(zip(ch.column("individual").to_pylist(), ch.column("ch").to_pylist(), strict=True))
    assert got == {f"ind{a}": "".join(v) for a, v in truth.items()}
    counts = population.survey_counts(identities).to_pylist()
    for y, row in enumerate(counts):
        seen = {a for a, v in truth.items() if v[y] == "1"}
        earlier = {a for a, v in truth.items() if "1" in v[:y]}
        assert row["seen"] == len(seen) and row["resighted"] == len(seen & earlier)
