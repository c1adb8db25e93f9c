"""Evaluation: how well an embedding model re-identifies, by protocol, with near-duplicates excluded.

* :mod:`reid.evaluation.data`: the labelled rows of an embeddings table as arrays (:class:`EvalData`);
* :mod:`reid.evaluation.protocols`: who queries and who is the gallery (``loo``, ``split``, ``time``);
* :mod:`reid.evaluation.exclusions`: query/gallery pairs left out of a ranking (same burst, same day,
  opposite flanks), for the evaluation job and for training validation;
* :mod:`reid.evaluation.metrics`: accuracy@k, mAP, open-set metrics (training validation uses them too);
* :mod:`reid.evaluation.scoring`: one protocol's metrics, candidates, score distributions and threshold.
* :mod:`reid.evaluation.plots`: the report's figures (accuracy@k curve, score histograms, 2-D maps);
* :mod:`reid.evaluation.results`: what `reid evaluate` writes besides the report (metrics order, candidates);
* :mod:`reid.evaluation.report`: the self-contained HTML report (jinja2 template, autoescaped).

The embeddings reader they all start from is :func:`reid.embeddings.read_embeddings`.
"""
