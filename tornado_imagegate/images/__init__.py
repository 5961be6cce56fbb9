"""The image subsystem: keeping provider images, serving them through signed links, fetching.

``store.py`` is its one interface to the rest of the gateway. Below it: ``cache.py`` (the memory
LRU over its tiers, and the ``Tier`` interface), ``disk.py`` (the disk tier), ``fetch.py`` (shared,
checked, streamed downloads), ``links.py`` (signing and reading links), ``imagetype.py`` (image
types from bytes) and ``cache_metrics.py`` (the cache's figures in ``/metrics``).
"""
