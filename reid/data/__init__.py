"""Data for training and evaluation: labels, splits, the near-duplicate rules, the training cache.

* :mod:`reid.data.labels`: an archive's metadata columns and its labelled rows;
* :mod:`reid.data.splits`: split tables (``reid split`` outputs and users' query/gallery tables);
* :mod:`reid.data.sightings`: which photos come from one sighting (the near-duplicate rules);
* :mod:`reid.data.trainval`: training's train/validation rows and their classes;
* :mod:`reid.data.cache`: the local Arrow cache of decoded, shrunk training and validation images;
* :mod:`reid.data.dataset`: the torch Dataset over that cache;
* :mod:`reid.data.sampler`: P x K batches for metric learning.
"""
