"""Performance measurements (step cost, loss time and memory, loader, accelerator) and their targets.

Run it with ``python harness/perf.py`` or the console script ``uniclip-perf`` (both ``uniclip_plugin.perf.cli.main``).
One module per concern:

- ``cli``: the command line; each mode is a list of sections, each section a ``measure`` and a ``render``;
- ``settings``: the run's sizes, derived once from the flags;
- ``timing``: medians, round-robin rounds, a fresh interpreter per measurement, the resident-set peak;
- ``steps``: what is timed: the method batch, one training step per method, tower and part passes, forward counts
  and bounds (and the one call into the plugin's training glue, ``create_plugin_model``);
- ``step_cost`` (sections 1–3), ``loader`` (4), ``options`` (5), ``loss_memory`` (6), ``efficiency`` (7),
  ``targets`` (8), ``accelerator`` (0, ``--gpu-only``), ``allocator`` (``--malloc-ab``), ``threads``
  (``--train-threads``): each section's ``measure(settings, results) -> dict``;
- ``report``: one ``render_<section>(settings, results) -> str`` per section.

Cut by data flow: sections 1–3 are one measurement (towers, steps and parts share their timing rounds), later
sections read earlier results (the UniCLIP step time, its view count, the MP-NCE time at the training batch), so a
section's ``measure`` receives the results so far. Renderers also receive the settings: the labels name sizes
(model, rounds, loader samples) that are not among the JSON's keys. The options (section 5) sit in a module of their
own because they mix step options with the 2-process loss. This ``__init__`` imports nothing: fresh-process workers
import just their module (e.g. ``loss_memory``), never open_clip.
"""
