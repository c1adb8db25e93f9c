"""Search: sharded FAISS indexes, all-vs-all k-NN over them, and the population that comes out.

* :mod:`reid.search.faiss_index`: choose, train, build, search and store one FAISS index;
* :mod:`reid.search.index_store`: a sharded index on storage (versions, manifest, shards, id tables);
* :mod:`reid.search.build`: building an index version without Ray (plan, quantizer, shards, clean-up);
* :mod:`reid.search.allvsall`: the Ray-free work units of all-vs-all search ((shard x block) tasks);
* :mod:`reid.search.population`: identities, per-survey counts and capture histories from matches.

Decisions from neighbours (known individual or new) are :mod:`reid.matching`; the embeddings rows
searched are read by :mod:`reid.embeddings`.
"""
