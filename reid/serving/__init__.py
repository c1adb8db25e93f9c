"""The review page's domain logic: no web framework, no Ray; usable from a notebook.

``lookup``  archive rows by ``image_id``, the archive behind an index, thumbnails (also the report's)
``matcher`` one photo -> its candidate individuals, with the index's model and every shard in process
``uploads`` what an upload may be (type, pixels) and the decode budget uploads share
``guard``   which Host names and Origins the page answers (DNS rebinding, cross-site requests)
``sockets`` the listening socket, bound before anything loads, and the address to open
``service`` what each request does (the routes in :mod:`jobs.serve` only read the request)
``desk``    the review queue of a match output and the decisions recorded on its items

The web layer (FastAPI app, routes, CLI) stays in :mod:`jobs.serve`. The submodules are
imported by name, so importing one (say ``lookup`` for the report) loads no FAISS.
"""

__all__ = ["desk", "guard", "lookup", "matcher", "service", "sockets", "uploads"]
