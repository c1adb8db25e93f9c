"""Helpers the test modules share (no fixtures: those live in tests/conftest.py).

* :mod:`tests.support.images`: photos and JPEG bytes made here, decompression bombs, a folder of bad files;
* :mod:`tests.support.evalset`: an embeddings output with known individuals, for evaluate and the report;
* :mod:`tests.support.servedata`: the served index built by the real jobs, photos to query it with;
* :mod:`tests.support.knn`: vectors with exact inner products and the brute-force k-NN reference;
* :mod:`tests.support.formats`: small input files of each `reid ingest` format over real JPEGs.
"""
