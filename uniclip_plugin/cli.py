"""``open_clip`` console script: ``open_clip train --loss {clip,siglip,uniclip_mpnce,...} <open_clip_train flags>``.

Our flags are parsed first (``parse_known_args``); everything else goes to ``open_clip_train.main.main`` unchanged,
so every open_clip_train flag keeps working. Multi-process: ``torchrun --nproc_per_node N $(which open_clip) -- train
... --local-loss --gather-with-grad`` (the ``--`` avoids torchrun's ``--logs`` abbreviation clash, E6).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import Any, Optional

import torch

from .errors import PluginError

SUBCOMMANDS = {"train": "train a model with open_clip_train and a plugin --loss",
               "list": "list plugin losses and model configs"}


def _plugin_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="open_clip train", add_help=False, allow_abbrev=False,
                                description="Plugin flags (all other flags are open_clip_train's).")
    p.add_argument("--loss", default="clip", help="training objective (see `open_clip list`)")
    g = p.add_argument_group("UniCLIP model (deep-merged into the model config's uniclip_cfg)")
    g.add_argument("--views", type=int, default=None, help="image views per sample (V=1 drops image–image pairs)")
    g.add_argument("--view-preset", default=None, help="augmentation strengths: simclr | mocov2 | clip_weak | none")
    g.add_argument("--aug-embed", dest="aug_embed", action="store_true", default=None,
                   help="use the augmentation-aware embedding (config default)")
    g.add_argument("--no-aug-embed", dest="aug_embed", action="store_false", help="ablation: no aug-aware embedding")
    g.add_argument("--aug-fusion", choices=["concat", "add"], default=None)
    g.add_argument("--domain-similarity", dest="domain_similarity", action="store_true", default=None)
    g.add_argument("--no-domain-similarity", dest="domain_similarity", action="store_false",
                   help="ablation: one shared temperature and offset for all domain pairs")
    g = p.add_argument_group("UniCLIP loss")
    g.add_argument("--mpnce-objective", default="mpnce", choices=["mpnce", "infonce", "supcon", "milnce"])
    g.add_argument("--text-text-negatives", dest="text_text_negatives", action="store_true", default=True)
    g.add_argument("--no-text-text-negatives", dest="text_text_negatives", action="store_false")
    g.add_argument("--similarity-form", default="shift_scale", choices=["shift_scale", "scale_shift"],
                   help="shift_scale: s = scale·(cos − offset); scale_shift: s = scale·cos − offset")
    g.add_argument("--loss-chunk-size", type=int, default=0, help="rows per chunk of the loss (0 = unchunked)")
    g = p.add_argument_group("SLIP loss")
    g.add_argument("--ssl-scale", type=float, default=1.0, help="weight of SLIP's SimCLR term (SLIP: 1.0)")
    g.add_argument("--ssl-temp", type=float, default=0.1, help="temperature of SLIP's SimCLR NT-Xent (SLIP: 0.1)")
    g = p.add_argument_group("DeCLIP loss (weight 0 switches a term, and its model part, off)")
    g.add_argument("--declip-mvs-weight", type=float, default=0.4, help="multi-view InfoNCE (DeCLIP: 0.4)")
    g.add_argument("--declip-simsiam-weight", type=float, default=0.2, help="image SimSiam (DeCLIP: 0.2)")
    g.add_argument("--declip-mlm-weight", type=float, default=0.2, help="masked language modelling (DeCLIP: 0.2)")
    g.add_argument("--declip-nns-weight", type=float, default=0.2, help="nearest-neighbour text (DeCLIP: 0.2)")
    g.add_argument("--declip-no-eda", action="store_true", help="no EDA text view (MVS over (x1,t), (x2,t) only)")
    return p


def _option(rest: list[str], name: str, default: Optional[str] = None) -> Optional[str]:
    """Value of ``--name`` in an open_clip_train argv (``--name v`` or ``--name=v``)."""
    for i, tok in enumerate(rest):
        if tok == name and i + 1 < len(rest):
            return rest[i + 1]
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return default


def _check_train_data(pattern: Optional[str]) -> None:
    if not pattern:
        return
    import braceexpand
    for source in pattern.split("::"):
        missing = [p for p in braceexpand.braceexpand(source)
                   if "://" not in p and not p.startswith("pipe:") and not glob.glob(p)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise PluginError(f"--train-data: no such file {missing[0]!r}{more}; check the path or brace pattern, "
                              f"or build data with `python harness/data.py build`")


def _model_overrides(ours: argparse.Namespace) -> dict[str, dict[str, Any]]:
    keys = ("views", "view_preset", "aug_embed", "aug_fusion", "domain_similarity")
    uni = {k: getattr(ours, k) for k in keys if getattr(ours, k) is not None}
    overrides = {"uniclip_cfg": uni} if uni else {}
    if getattr(ours, "loss", None) == "declip":
        from .losses.declip import declip_model_overrides
        declip = declip_model_overrides(ours)
        if declip:
            overrides["declip_cfg"] = declip
    return overrides


def _check_model_for_loss(spec: Any, model_name: str) -> None:
    from . import factory, registry
    cfg = factory.plugin_model_config(model_name)
    marker = registry.marker_of(cfg) if cfg else None
    if spec.marker is not None and marker != spec.marker:
        fitting = [n for n in factory.plugin_model_names() if spec.marker in (factory.plugin_model_config(n) or {})]
        raise PluginError(f"--loss {spec.name} needs a model with its parts (a config with '{spec.marker}'), got "
                          f"--model {model_name}; choose one of: {', '.join(fitting)}")
    if spec.marker is None and marker is not None:
        raise PluginError(f"--loss {spec.name} trains a plain open_clip model, but {model_name} is a plugin model "
                          f"('{marker}'); use its --loss or a plain config such as CLIP-Tiny-64")


def _whole_image_train_transform(create_fn: Any) -> Any:
    """Models that sample views in forward must receive the whole image, not open_clip's random crop."""
    def create_model_and_transforms(*args: Any, **kwargs: Any) -> Any:
        model, preprocess_train, preprocess_val = create_fn(*args, **kwargs)
        if isinstance(getattr(model, "views", None), torch.nn.Module) and not kwargs.get("aug_cfg"):
            preprocess_train = preprocess_val
        return model, preprocess_train, preprocess_val
    return create_model_and_transforms


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


def train(argv: list[str]) -> int:
    """``open_clip train``: parse plugin flags, install the loss, then run open_clip_train's ``main``."""
    ours, rest = _plugin_parser().parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        _plugin_parser().print_help()
        print("\nopen_clip_train flags:\n")
    from . import factory, register, registry
    register()
    import open_clip_train.main as ocm

    if not ("-h" in rest or "--help" in rest):
        spec = registry.get_loss(ours.loss)
        model_name = _option(rest, "--model", "RN50")
        _check_model_for_loss(spec, model_name)
        if spec.marker is not None and "--distill-model" in " ".join(rest):
            raise PluginError(f"--distill is not supported with --loss {spec.name}")
        _check_train_data(_option(rest, "--train-data"))
        if ours.loss == "siglip" and "--siglip" not in rest:
            rest.append("--siglip")
        factory.set_model_overrides(_model_overrides(ours))
        from .train_hooks import NonFiniteGuard, TrainLossAdapter

        def create_loss(args: argparse.Namespace) -> Any:
            for key, val in vars(ours).items():
                setattr(args, key, val)
            loss = spec.build(args)
            if spec.marker is None:
                return loss
            adapter = TrainLossAdapter(loss, log_every=args.log_every_n_steps, is_master=args.rank == 0)
            guard.adapter = adapter
            return adapter

        guard = NonFiniteGuard().install()
        ocm.create_loss = create_loss
        if spec.wrap_tokenizer is not None:
            ours.seed = int(_option(rest, "--seed", "0") or 0)  # open_clip_train's --seed, for seeded data hooks
            get_tokenizer = ocm.get_tokenizer
            ocm.get_tokenizer = lambda *a, **kw: spec.wrap_tokenizer(get_tokenizer(*a, **kw), ours)
        ocm.create_model_and_transforms = _whole_image_train_transform(ocm.create_model_and_transforms)
        if _trains_on_cpu(_option(rest, "--device", "cuda") or "cuda"):
            from .cpu_malloc import keep_freed_memory
            print(f"open_clip train: {keep_freed_memory()}", file=sys.stderr)
    try:
        rc = ocm.main(rest)
    except PluginError as err:
        raise PluginError(f"{err}; last checkpoint: {_last_checkpoint(rest)}") from err
    except SystemExit as exc:  # argparse errors inside open_clip_train
        return int(exc.code or 0)
    if rc == -1:
        raise PluginError("the experiment folder already exists (open_clip_train refuses to overwrite it); pass a new "
                          "--name, or --resume latest to continue it")
    return int(rc or 0)


def list_plugins() -> int:
    from . import factory, register, registry
    register()
    print("losses: " + ", ".join(registry.list_losses()))
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
        return 0
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "train":
            return train(rest)
        if cmd == "list":
            return list_plugins()
        raise PluginError(f"unknown subcommand {cmd!r}; choices: {', '.join(SUBCOMMANDS)}")
    except PluginError as err:
        print(f"open_clip {cmd}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
