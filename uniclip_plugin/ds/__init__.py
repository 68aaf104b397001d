"""The DeepSpeed (ZeRO-1/2/3, fp32 or bf16) trainer, its step checkpoints and the export to a plain open_clip
checkpoint; ``harness/train.py`` is its script (see docs/DEEPSPEED.md)::

    deepspeed --num_gpus 8 harness/train.py --deepspeed_config deepspeed_configs/zero2_bf16.json \\
        --model UniCLIP-ViT-B-32 --loss uniclip_mpnce --train-data 'shards/{000000..000999}.tar' \\
        --train-num-samples N --batch-size 256 --epochs 30 --lr 5e-4 --warmup 2000 --logs runs/ --name uniclip-b32
    deepspeed --hostfile hosts harness/train.py ...                          # several nodes
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 harness/train.py ... --no-cpu-shm-comm   # CPU ranks (gloo)
    python harness/train.py --export runs/uniclip-b32 --out uniclip-b32.pt  # -> runs/uniclip-b32/export/

Same models, ``--loss`` registry, webdataset pipeline (``open_clip_train.data.get_wds_dataset``) and LR schedule
(``open_clip_train.scheduler``) as ``open_clip train``; the loss is always built with ``local_loss`` +
``gather_with_grad`` (the exact global-batch gradient, open_clip #616/#894). The DeepSpeed pitfalls D1–D6 it handles
are described in docs/UPSTREAM.md.

Modules, in the order a run uses them (each module depends only on those above it):

* ``errors``: ``HarnessError`` and the ``train.py`` program name of the one-line errors.
* ``config``: the DeepSpeed JSON config, ``"auto"`` fields filled and checked before any process group exists.
* ``distributed``: ranks, device, process group, broadcast and barrier.
* ``data``: open_clip_train's webdataset loader, rebuilt identically per epoch (the resume fast-forwards it).
* ``build``: model (D1: no 0-dim parameters) and open_clip_train's optimiser parameter groups.
* ``step``: one optimiser step (D3, D4, the shared finite verdict) and the watch on skipped steps.
* ``checkpoint``: atomic step checkpoints (``LATEST`` and DeepSpeed's ``latest``), failed-write handling, damaged-
  checkpoint fallback at resume, RNG/extra state, consolidation to fp32.
* ``metrics``: rank 0's ``metrics.jsonl`` and DeepSpeed's Monitor (the config's ``tensorboard``/``csv_monitor``/...).
* ``setup``: preflight checks, run directory, resume decision, logs → a ``RunPlan`` (the same on every rank).
* ``validate``: open_clip_train's in-training validation (``--val-data``: ``Eval Epoch:``, ``results.jsonl``).
* ``trainer``: ``Trainer`` (step, epoch, validation, save, a lost peer as one line) and ``train``.
* ``export``: ``--export``, a run → a plain open_clip checkpoint.
* ``cli``: the parser and ``main``.

Why this cut: the data flows one way, arguments → ``RunPlan`` (setup) → engine (build, through
``uniclip_plugin.integration``) → steps (trainer, step, data) → checkpoints → export, so each stage is one module
that the next one imports. The set-up is separate
from the loop because everything in it must fail as one line on every rank before the first collective, and the step
is separate from the loop because it is what the exactness tests drive directly. The distributed plumbing and the
metrics log get modules of their own because both the set-up and the loop use them.
"""
