"""A synthetic open-population camera-trap survey: the project's demo and test data.

Each individual carries its own coat (spots and/or stripes drawn from a per-individual seed) on a
four-legged silhouette; the left and right flanks have independent patterns and the animal faces
the other way. The population lives through several yearly surveys (survival, recruitment,
imperfect detection) and is photographed in camera bursts (frames seconds apart, same camera,
tiny pose changes). Every sighting varies pose, scale, lighting, blur, noise, occlusion by
vegetation and background, so an untrained network cannot match individuals but the coat
pattern still identifies them. Output rows follow ``reid.schema.ARCHIVE_SCHEMA``.

Everything is a pure function of :class:`~reid.synthetic.survey.SynthConfig` (same seed, same
bytes). The population is planned first (cheap, no pixels), then each image is rendered from its
own seeded generator, so a caller can render only the images it still needs.

* :mod:`reid.synthetic.survey`: the options and the population plan (who is alive, seen, where, when);
* :mod:`reid.synthetic.render`: each individual's coat and silhouette (sprites);
* :mod:`reid.synthetic.scenes`: a sighting's frame (background, pose, light, occlusion) and archive row;
* :mod:`reid.synthetic.truth`: the ground truth written next to an archive, and its readers.
"""
