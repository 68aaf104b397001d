"""``open_clip`` console script: ``open_clip train --loss {clip,siglip,uniclip_mpnce,slip,declip} <open_clip_train
flags>``, ``open_clip export --checkpoint CKPT --model NAME --out DIR`` (a hub bundle, ``hub``) and ``open_clip list``.

Our flags are parsed first (``parse_known_args``); everything else goes to ``open_clip_train.main.main`` unchanged,
so every open_clip_train flag keeps working. Multi-process: ``torchrun --nproc_per_node N $(which open_clip) -- train
... --local-loss --gather-with-grad`` (the ``--`` avoids torchrun's ``--logs`` abbreviation clash, docs/UPSTREAM.md
E6). The method glue is ``integration``; this module only parses, checks and runs.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
from typing import Any, Optional

import torch

from .errors import PluginError

SUBCOMMANDS = {
    "train": "train a model with open_clip_train and a plugin --loss",
    "export": "write a plugin checkpoint as an open_clip hub bundle (local-dir: / hf-hub:)",
    "list": "list plugin losses and model configs",
}


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are ``PluginError`` one-liners (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise PluginError(f"{message}; see `{self.prog} --help`")


def plugin_parser() -> argparse.ArgumentParser:
    """The plugin's flags of ``open_clip train`` (everything else is open_clip_train's)."""
    from . import integration

    parser = OneLineParser(
        prog="open_clip train",
        add_help=False,
        allow_abbrev=False,
        description="Plugin flags (all other flags are open_clip_train's).",
    )
    integration.add_method_arguments(parser)
    return parser


def train_argv(loss: str, model: str, *flags: str, **options: object) -> list[str]:
    """The command line ``python -m uniclip_plugin.cli train --loss LOSS --model MODEL FLAGS --key value ...``: keys
    in order, ``_`` → ``-``; ``True`` gives a bare flag, ``None`` / ``False`` leave the key out."""
    argv = [sys.executable, "-m", "uniclip_plugin.cli", "train", "--loss", loss, "--model", model, *flags]
    for key, value in options.items():
        if value is None or value is False:
            continue
        argv.append("--" + key.replace("_", "-"))
        if value is not True:
            argv.append(str(value))
    return argv


def _option(rest: list[str], name: str, default: Optional[str] = None) -> Optional[str]:
    """Value of ``--name`` in an open_clip_train argv (``--name v`` or ``--name=v``)."""
    for i, tok in enumerate(rest):
        if tok == name and i + 1 < len(rest):
            return rest[i + 1]
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return default


def _last_checkpoint(rest: list[str]) -> str:
    logs, name = _option(rest, "--logs", "./logs/"), _option(rest, "--name")
    found = sorted(glob.glob(os.path.join(logs or ".", name or "*", "checkpoints", "*.pt")), key=os.path.getmtime)
    return found[-1] if found else "none written yet"


def _trains_on_cpu(device: str) -> bool:
    """open_clip_train's choice: ``--device`` (default cuda), falling back to CPU when that accelerator is missing."""
    kind = device.split(":")[0]
    if kind == "cpu":
        return True
    backend = getattr(torch, kind, None)
    return not (backend is not None and hasattr(backend, "is_available") and backend.is_available())


def check_lr(value: Optional[str]) -> None:
    """``--lr`` must be a positive finite number (open_clip_train would train on, silently, with nan or 0).

    Raises:
        PluginError: it is not.
    """
    if value is None:
        return
    try:
        lr = float(value)
    except ValueError:
        lr = math.nan
    if not (math.isfinite(lr) and lr > 0):
        raise PluginError(
            f"--lr {value} is not a positive finite learning rate; pass one such as --lr 5e-4 (or omit "
            f"--lr for open_clip_train's default)"
        )


def _check_pretrained(setup: Any, rest: list[str], model_name: str) -> None:
    """A ``--pretrained`` file of another architecture fails here, in one line, before open_clip_train starts."""
    from . import factory

    pretrained = _option(rest, "--pretrained")
    if pretrained:
        factory.check_pretrained(model_name, pretrained, **setup.model_kwargs)


def _prepare_run(ours: argparse.Namespace, rest: list[str]) -> None:
    """Check the run's flags and install the method into open_clip_train (one run per process)."""
    from . import integration

    spec = integration.registry.get_method(ours.loss)
    check_lr(_option(rest, "--lr"))
    model_name = _option(rest, "--model", "RN50") or "RN50"
    integration.check_model(spec, model_name)
    if spec.marker is not None and "--distill-model" in " ".join(rest):
        raise PluginError(f"--distill is not supported with --loss {spec.name}")
    integration.check_train_data(_option(rest, "--train-data"))
    rest.extend(flag for flag in spec.open_clip_train_flags if flag not in rest)
    ours.seed = int(_option(rest, "--seed", "0") or 0)  # open_clip_train's --seed, for seeded data hooks (EDA)
    setup = integration.prepare(ours)
    _check_pretrained(setup, rest, model_name)
    integration.install_open_clip_train_hooks(setup, log_every=lambda args: args.log_every_n_steps)
    if _trains_on_cpu(_option(rest, "--device", "cuda") or "cuda"):
        from .cpu_malloc import keep_freed_memory

        print(f"open_clip train: {keep_freed_memory()}", file=sys.stderr)


def train(argv: list[str]) -> int:
    """``open_clip train``: parse plugin flags, install the method, then run open_clip_train's ``main``."""
    wants_help = "-h" in argv or "--help" in argv
    ours, rest = plugin_parser().parse_known_args(argv)
    if wants_help:
        plugin_parser().print_help()
        print("\nopen_clip_train flags:\n")
    from . import register

    register()
    import open_clip_train.main as ocm

    if not wants_help:
        _prepare_run(ours, rest)
    try:
        rc = ocm.main(rest)
    except PluginError as err:
        raise PluginError(f"{err}; last checkpoint: {_last_checkpoint(rest)}") from err
    except SystemExit as exc:  # argparse errors inside open_clip_train
        return int(exc.code or 0)
    if rc == -1:
        raise PluginError(
            "the experiment folder already exists (open_clip_train refuses to overwrite it); pass a new "
            "--name, or --resume latest to continue it"
        )
    return int(rc or 0)


def export(argv: list[str]) -> int:
    """``open_clip export --checkpoint CKPT --model NAME --out DIR [method flags]``: the hub bundle of a plugin
    checkpoint. Method flags that do not change the weights (``--views 3``) must be repeated, as when training."""
    from . import factory, hub, integration, register, registry

    parser = OneLineParser(
        prog="open_clip export",
        allow_abbrev=False,
        parents=[plugin_parser()],
        description="Write a plugin checkpoint as an open_clip hub bundle.",
    )
    parser.add_argument("--checkpoint", required=True, help="the weights: a checkpoint file or a pretrained tag")
    parser.add_argument("--model", required=True, help="the plugin model config, e.g. UniCLIP-ViT-B-32")
    parser.add_argument("--out", required=True, help="the bundle folder (then --model local-dir:DIR)")
    args = parser.parse_args(argv)
    register()
    cfg = factory.plugin_model_config(args.model)
    if cfg is None:
        raise PluginError(
            f"--model {args.model} is not a plugin model; choose one of: {', '.join(factory.plugin_model_names())}"
        )
    if "--loss" not in argv:  # the method flags belong to the model's method
        args.loss = registry.method_for_marker(registry.marker_of(cfg)).name
    setup = integration.prepare(args)
    integration.check_model(setup.spec, args.model)
    folder = hub.export_bundle(args.checkpoint, args.model, args.out, **setup.model_kwargs)
    print(f"open_clip export: wrote {folder}; load it with create_model_and_transforms('local-dir:{folder}')")
    return 0


def list_plugins() -> int:
    """``open_clip list``: the methods and the plugin model configs."""
    from . import factory, register, registry

    register()
    print("losses: " + ", ".join(registry.list_methods()))
    print("plugin models: " + ", ".join(factory.plugin_model_names()))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point; returns the exit code (errors print one line)."""
    from .compat import strip_torchrun_separator

    argv = strip_torchrun_separator(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: open_clip <subcommand> [flags]\n\nsubcommands:")
        for name, text in SUBCOMMANDS.items():
            print(f"  {name:8s} {text}")
        print("\n`open_clip train --help` lists the plugin flags, then open_clip_train's.")
        return 0
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "train":
            return train(rest)
        if cmd == "export":
            return export(rest)
        if cmd == "list":
            return list_plugins()
        raise PluginError(f"unknown subcommand {cmd!r}; choices: {', '.join(SUBCOMMANDS)}")
    except PluginError as err:
        print(f"open_clip {cmd}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
