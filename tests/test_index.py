"""reid.search.faiss_index, reid.search.index_store and reid.embeddings row ranges: factory choice, shards, exact sharded search vs brute force, IVF recall (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from reid import embeddings, matching, storage
from reid.errors import ConfigError, ReidError
from reid.search import faiss_index, index_store
from tests.support.knn import assert_same_knn, brute_force, clustered_vectors, grid_vectors


def sharded_search(x, q, k, shard_size, factory="Flat", nprobe=None, train=None, **kw):
    """Build shards like the job does (one trained quantizer) and merge their top-k."""
    trained = faiss_index.train(factory, x if train is None else train) if "IVF" in factory else None
    parts = []
    for lo in range(0, len(x), shard_size):
        shard = faiss_index.build_shard(
            trained if trained is not None else faiss_index.make_index(factory, x.shape[1]),
            x[lo : lo + shard_size],
        )
        d, i = matching.search_shard(shard, q, k, nprobe=nprobe, **kw)
        parts.append((d, matching.to_global(i, lo)))
    return matching.merge_topk(parts, k)


def test_factory_is_picked_by_size():
    assert faiss_index.choose_factory(10_000, 512) == "Flat"
    assert faiss_index.choose_factory(1_000_000, 512) == "IVF4096,Flat"
    big = faiss_index.choose_factory(100_000_000, 512)
    assert big.startswith("IVF") and big.endswith(",PQ64")
    for n in (60_000, 2_000_000, 50_000_000):
        nlist = faiss_index.nlist_for(n)
        assert nlist & (nlist - 1) == 0 and n // nlist >= 39
    for dim in (64, 128, 256, 384, 512, 768):
        assert dim % faiss_index.pq_m(dim) == 0
    assert faiss_index.default_nprobe("Flat") == 1 and faiss_index.default_nprobe("IVF4096,Flat") == 64


def test_bad_factory_is_a_config_error():
    with pytest.raises(ConfigError, match="IVFbogus"):
        faiss_index.make_index("IVFbogus", 32)


def test_sharded_exact_equals_brute_force():
    x = grid_vectors(2000)
    d, i = sharded_search(x, x, 10, shard_size=300)
    ref_d, ref_i = brute_force(x, x, 11)
    assert_same_knn(d, i, ref_d[:, :10], ref_i[:, :10], ref_d[:, 10])
    assert (i[:, 0] == np.arange(len(x))).all()  # self first when not excluded


def test_sharded_exact_self_excluded_and_small_k_tail():
    x = grid_vectors(700, seed=1)
    meta = pa.table({"image_id": [f"i{j}" for j in range(len(x))]})
    parts = []
    for lo in range(0, len(x), 256):
        shard = faiss_index.build_shard(faiss_index.make_index("Flat", 32), x[lo : lo + 256])
        gallery = matching.GalleryMeta(meta.slice(lo, 256))
        dd, ii = matching.search_shard(shard, x, 10, meta, gallery, matching.Exclusions(self_match=True))
        parts.append((dd, matching.to_global(ii, lo)))
    d, i = matching.merge_topk(parts, 10)
    ref_d, ref_i = brute_force(x, x, 11, allowed=~np.eye(len(x), dtype=bool))
    assert_same_knn(d, i, ref_d[:, :10], ref_i[:, :10], ref_d[:, 10])
    assert not (i == np.arange(len(x))[:, None]).any()


def test_ivf_recall_at_10_against_exact(capsys):
    x, _ = clustered_vectors(20_000)
    q = x[::20]
    exact_d, exact_i = sharded_search(x, q, 10, shard_size=5_000)
    trained = faiss_index.train("IVF128,Flat", x)
    shards = [faiss_index.build_shard(trained, x[lo : lo + 5_000]) for lo in range(0, len(x), 5_000)]
    recalls = {}
    for nprobe in (1, 4, 16):
        parts = [faiss_index.search(s, q, 10, nprobe) for s in shards]
        _, ivf_i = matching.merge_topk(
            [(d, matching.to_global(i, 5_000 * j)) for j, (d, i) in enumerate(parts)], 10
        )
        recalls[nprobe] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ivf_i, exact_i, strict=True)])
    with capsys.disabled():
        print(
            f"\nIVF128,Flat recall@10 vs exact (N=20000, d=64, 4 shards), by nprobe: "
            f"{ {k: round(float(v), 4) for k, v in recalls.items()} }"
        )
    assert recalls[1] <= recalls[4] <= recalls[16]
    assert recalls[16] >= 0.95


def test_sharded_ivf_equals_one_ivf_index():
    """One shared quantizer: the shards probe the same cells as the unsharded index."""
    x, _ = clustered_vectors(6_000, seed=2)
    trained = faiss_index.train("IVF64,Flat", x)
    whole = faiss_index.build_shard(trained, x)
    d1, i1 = faiss_index.search(whole, x[:500], 10, nprobe=4)
    d2, i2 = sharded_search(x, x[:500], 10, shard_size=1_500, factory="IVF64,Flat", nprobe=4, train=x)
    np.testing.assert_allclose(d1, d2, rtol=0, atol=1e-6)
    assert (i1 == i2).mean() > 0.999


def test_save_load_roundtrip(tmp_path):
    x = grid_vectors(300)
    index = faiss_index.build_shard(faiss_index.train("IVF16,Flat", x), x)
    uri = str(tmp_path / "a" / "shard.faiss")
    faiss_index.save_faiss(index, uri)
    back = faiss_index.load_faiss(uri)
    assert back.ntotal == 300
    assert (
        faiss_index.search(back, x[:5], 3, nprobe=16)[1] == faiss_index.search(index, x[:5], 3, nprobe=16)[1]
    ).all()
    assert faiss_index.deserialize(faiss_index.serialize(index)).ntotal == 300


def test_read_range_reads_only_the_rows_asked(tmp_path):
    t = pa.table({"image_id": [f"i{j}" for j in range(1000)], "v": list(range(1000))})
    uri = str(tmp_path / "p.parquet")
    storage.write_parquet(t, uri, row_group_size=128)
    r = embeddings.read_range(embeddings.RowRange(uri, 250, 520), ["v"])
    assert r.column("v").to_pylist() == list(range(250, 520))
    with pytest.raises(ReidError, match="rebuild the index"):
        embeddings.read_range(embeddings.RowRange(uri, 900, 1200))
    with pytest.raises(ReidError, match="not found"):
        embeddings.read_range(embeddings.RowRange(str(tmp_path / "gone.parquet"), 0, 1))


def test_split_ranges_bounds_groups():
    ranges = [
        embeddings.RowRange("a", 0, 500),
        embeddings.RowRange("b", 0, 130),
        embeddings.RowRange("c", 10, 20),
    ]
    groups = embeddings.split_ranges(ranges, 200)
    assert [sum(r.rows for r in g) for g in groups] == [200, 200, 200, 40]
    assert groups[2] == [embeddings.RowRange("a", 400, 500), embeddings.RowRange("b", 0, 100)]
    with pytest.raises(ConfigError):
        embeddings.split_ranges(ranges, 0)


def test_unnormalised_embeddings_are_refused():
    x = grid_vectors(10)
    embeddings.check_normalised(x, "ok")
    with pytest.raises(ReidError, match="not L2-normalised.*reid embed"):
        embeddings.check_normalised(x * 3, "emb/part-0.parquet")
    x[3, 0] = np.nan
    with pytest.raises(ReidError, match="1 embeddings"):
        embeddings.check_normalised(x, "emb")


def test_index_and_query_must_agree():
    info = index_store.IndexInfo(
        uri="idx", version="v-1", dim=32, factory="Flat", model_id="model-a", shards=[]
    )
    index_store.check_compatible(info, "model-a", 32, "q")
    with pytest.raises(ReidError, match="model_id 'model-b' differs .*'model-a'"):
        index_store.check_compatible(info, "model-b", 32, "q")
    with pytest.raises(ReidError, match="dim 64, the index idx has dim 32"):
        index_store.check_compatible(info, "model-a", 64, "q")
