"""Embedding models: a timm backbone, pooling, an embedding neck and L2 normalisation.

A trained model travels as a *model package* (a directory or S3 prefix): ``model.safetensors``
plus ``model.json`` holding everything needed to rebuild the network *and its preprocessing*
(input size, mean/std), and a ``model_id`` that hashes weights and config together. Readers of
embeddings and indexes compare model ids, so a re-trained model can never be mixed up silently.

* :mod:`reid.model.spec`: :class:`~reid.model.spec.ModelSpec` (what a model is) and its checks;
* :mod:`reid.model.network`: the network a spec describes (:func:`~reid.model.network.create_model`);
* :mod:`reid.model.package`: model packages on storage and published models used zero-shot;
* :mod:`reid.model.backbones`: the project's own small CNN backbones, registered in timm;
* :mod:`reid.model.weight_sources`: pretrained weights installed from the package registry;
* :mod:`reid.model.losses`: metric-learning losses and miners by name.
"""
