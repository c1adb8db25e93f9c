"""Images: from stored bytes to the pixels a model sees, one path for every job.

* :mod:`reid.images.imageio`: robust decoding (EXIF orientation, bbox crop, any mode -> RGB, JPEG
  draft, decompression-bomb limit) and the reasons a photo is rejected;
* :mod:`reid.images.jpegroi`: region-of-interest JPEG decoding (ctypes binding of ``reid/_jpegroi.c``);
* :mod:`reid.images.preprocess`: decode -> uint8 square (CPU side), normalise (model side);
* :mod:`reid.images.transforms`: training augmentations and the eval transform.
"""
