"""Helpers of ``harness/data.py``: fetching registry packages, rendering images, writing webdataset shards and sets.

Modules: ``common`` (errors, images, atomic writers), ``sources`` (npm / Debian / wheel downloads into a cache),
``emoji`` (multi-style emoji pre-training shards and the held-out OpenMoji sets), ``clipart`` (OpenClipArt),
``labelled`` (Fashion-MNIST, digits) and ``card`` (``manifest.json``, ``DATA_CARD.md``, licences).
"""
