"""The review page's domain logic: no web framework, no Ray; usable from a notebook.

``lookup``  archive rows by ``image_id``, the archive behind an index, thumbnails (also the report's)
``matcher`` one photo -> its candidate individuals, with the index's model and every shard in process
``uploads`` what an upload may be (type, pixels) and the decode budget uploads share

The web layer (FastAPI app, Host/Origin checks, socket, CLI) stays in :mod:`jobs.serve`. The
submodules are imported by name, so importing one (say ``lookup`` for the report) loads no FAISS.
"""

__all__ = ["lookup", "matcher", "uploads"]
