"""The glue between the plugin and its two trainers, ``open_clip train`` (open_clip_train) and the DeepSpeed trainer.

Both call :func:`add_method_arguments` (``--loss`` and every method's flags), :func:`prepare` (parsed args -> a
:class:`Setup`: the method, the model kwargs, the loss, the tokenizer wrapper, the input transform rule) and
:func:`create_model_and_transforms`. The model options travel as arguments (``uniclip_cfg={...}``), never through
module state. ``open_clip train`` additionally installs :func:`install_open_clip_train_hooks`, the only place that
rebinds open_clip_train's module globals (``create_loss``, ``get_tokenizer``, ``create_model_and_transforms``), for the
one run of that process.
"""

from __future__ import annotations

import argparse
import glob
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from torch import nn

from . import registry
from .config import merge_options
from .errors import PluginError
from .registry import MethodSpec

# open_clip_train args that open_clip's create_loss reads; set when a loss is built outside open_clip_train
_CREATE_LOSS_DEFAULTS = {
    "distill": False,
    "horovod": False,
    "siglip": False,
    "loss_dist_impl": None,
    "coca_caption_loss_weight": 2.0,
    "coca_contrastive_loss_weight": 1.0,
    "local_loss": False,
    "gather_with_grad": False,
    "rank": 0,
    "world_size": 1,
    "model": "",
}


def _load_methods() -> None:
    from . import methods  # noqa: F401  (registers the built-in specs)


def method_flags() -> dict[str, list[str]]:
    """``{method: [argparse dests of its flags]}`` for every registered method."""
    _load_methods()
    owned: dict[str, list[str]] = {}
    for name in registry.list_methods():
        spec = registry.get_method(name)
        parser = argparse.ArgumentParser(add_help=False)
        if spec.add_arguments is not None:
            spec.add_arguments(parser)
        owned[name] = [a.dest for a in parser._actions]
    return owned


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--loss`` and one argument group per method with its flags (all defaulting to None = not given)."""
    _load_methods()
    # no argparse choices: registry.get_method names an unknown one in one line, with the choices
    parser.add_argument(
        "--loss",
        default="clip",
        metavar="{" + ",".join(registry.list_methods()) + "}",
        help="training objective (default clip): "
        + "; ".join(f"{n}: {registry.get_method(n).description}" for n in registry.list_methods()),
    )
    in_forward = [n for n in registry.list_methods() if registry.get_method(n).whole_image_input]
    views = parser.add_argument_group(f"views rendered in forward ({', '.join(in_forward)})")
    views.add_argument(
        "--view-source-size",
        type=int,
        default=None,
        metavar="PX",
        help="side of the training image the views are cut from (resize + centre crop; the views are "
        "rendered at the model's input size); default: the model config's, else the input size",
    )
    for name in registry.list_methods():
        spec = registry.get_method(name)
        if spec.add_arguments is not None:
            spec.add_arguments(parser.add_argument_group(f"--loss {name} ({spec.description})"))


def check_flags(spec: MethodSpec, args: argparse.Namespace) -> None:
    """A flag of another method given with ``--loss spec.name`` is an error, not silently ignored."""
    owned = method_flags()
    own = set(owned.get(spec.name, []))
    for method, dests in owned.items():
        if method == spec.name:
            continue
        given = [d for d in dests if getattr(args, d, None) is not None and d not in own]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise PluginError(
                f"{flag} is a flag of --loss {method}, not of --loss {spec.name}; drop it or use --loss {method}"
            )


def check_model(spec: MethodSpec, model_name: str) -> None:
    """The model must carry the method's marker (a plugin loss needs its model's parts), and a plain loss a plain
    model."""
    from . import factory

    cfg = factory.plugin_model_config(model_name)
    marker = registry.marker_of(cfg) if cfg else None
    if spec.marker is not None and marker != spec.marker:
        fitting = [n for n in factory.plugin_model_names() if spec.marker in (factory.plugin_model_config(n) or {})]
        raise PluginError(
            f"--loss {spec.name} needs a model with its parts (a config with '{spec.marker}'), got "
            f"--model {model_name}; choose one of: {', '.join(fitting)}"
        )
    if spec.marker is None and marker is not None:
        raise PluginError(
            f"--loss {spec.name} trains a plain open_clip model, but {model_name} is a plugin model "
            f"('{marker}'); use its --loss or a plain config such as CLIP-Tiny-64"
        )


def check_train_data(pattern: Optional[str]) -> None:
    """Every local shard of a ``--train-data`` pattern (``::``-separated sources, brace patterns) must exist."""
    if not pattern:
        return
    import braceexpand

    for source in pattern.split("::"):
        missing = [
            p
            for p in braceexpand.braceexpand(source)
            if "://" not in p and not p.startswith("pipe:") and not glob.glob(p)
        ]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise PluginError(
                f"--train-data: no such file {missing[0]!r}{more}; check the path or brace pattern, "
                f"or build data with `python harness/data.py build` (`uniclip-data build`)"
            )


@dataclass
class Setup:
    """What a trainer needs of the chosen method, from the parsed flags."""

    spec: MethodSpec
    args: argparse.Namespace  # the parsed plugin flags
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # constructor kwargs ({marker: options}, the method's)
    loss: Optional[nn.Module] = None  # built by prepare() when rank / world size are given

    @property
    def whole_image_input(self) -> bool:
        return self.spec.whole_image_input

    def build_loss(self, train_args: argparse.Namespace) -> nn.Module:
        """The method's loss for a trainer's args (rank, world size, ``--local-loss``, ...) plus the plugin flags.

        A method whose spec sets ``exact_global_loss`` gets the exact global-batch loss with world size > 1 (local rows
        × all gathered columns, gathered with gradient) whether or not ``--local-loss --gather-with-grad`` were given,
        and one log line says so."""
        merged = argparse.Namespace(**{**_CREATE_LOSS_DEFAULTS, **vars(train_args), **vars(self.args)})
        if self.spec.exact_global_loss and merged.world_size > 1:
            merged.local_loss = merged.gather_with_grad = True
            if merged.rank == 0:
                logging.info(
                    f"{self.spec.name}: exact global-batch loss (local rows × all gathered columns, gathered "
                    f"with gradient; --local-loss/--gather-with-grad not needed)"
                )
        return self.spec.build_loss(merged)

    def wrap_tokenizer(self, tokenizer: Callable) -> Callable:
        """The data pipeline's tokenizer (DeCLIP: caption + EDA caption rows); the plain one for other methods."""
        if self.spec.wrap_tokenizer is None:
            return tokenizer
        return self.spec.wrap_tokenizer(tokenizer, self.args)


def prepare(
    args: argparse.Namespace, *, rank: Optional[int] = None, world_size: int = 1, exact_global_loss: bool = False
) -> Setup:
    """Turn parsed args (``--loss`` and the method flags; ``--seed`` if the method seeds data hooks) into a Setup.

    Args:
        args: parsed flags; ``args.loss`` names the method.
        rank, world_size: when ``rank`` is given the loss is built now (``Setup.loss``); else call ``build_loss``.
        exact_global_loss: build the loss as local rows × all gathered columns with gradient (``--local-loss
            --gather-with-grad``), the exact global-batch loss, for every method; the DeepSpeed trainer always does.
            Methods whose spec sets ``exact_global_loss`` get it anyway (``Setup.build_loss``).

    Raises:
        PluginError: an unknown method, or a flag of another method.
    """
    spec = registry.get_method(args.loss)
    check_flags(spec, args)
    kwargs: dict[str, Any] = {}
    overrides = spec.model_overrides(args) if spec.model_overrides is not None else {}
    source = getattr(args, "view_source_size", None)
    if source is not None:
        if not spec.whole_image_input:
            raise PluginError(f"--view-source-size is for methods that render views in forward, not --loss {spec.name}")
        overrides["source_size"] = source
    if spec.marker is not None and overrides:
        kwargs[spec.marker] = overrides
    if spec.model_kwargs is not None:
        kwargs.update(spec.model_kwargs(args))
    setup = Setup(spec, args, kwargs)
    if rank is not None:
        train_args = argparse.Namespace(rank=rank, world_size=world_size)
        if exact_global_loss:
            train_args.local_loss = train_args.gather_with_grad = True
        setup.loss = setup.build_loss(train_args)
    return setup


def merge_model_kwargs(setup: Optional[Setup], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the setup's model kwargs under them (marker dicts deep-merged, the caller's values win)."""
    merged = dict(setup.model_kwargs) if setup is not None else {}
    for key, value in kwargs.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge_options(merged[key], value) if both else value
    return merged


def whole_image_transforms(model: nn.Module, transforms: tuple[Any, Any], aug_cfg: Any = None) -> tuple[Any, Any]:
    """``(train, val)`` transforms. Models that render their views in forward (``view_source_size``) get the whole
    image for training, not open_clip's random crop: resized and centre-cropped to their source size (the input
    size unless set larger, then the views are cut from the larger image), unless the user set ``--aug-cfg``."""
    train, val = transforms
    source = getattr(model, "view_source_size", None)
    if source is None or aug_cfg:
        return train, val
    if _side(source) == _side(model.visual.image_size):
        return val, val
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = PreprocessCfg(**{**model.visual.preprocess_cfg, "size": _side(source)})
    return image_transform_v2(cfg, is_train=False), val


def _side(size: Any) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def create_model_and_transforms(model_name: str, setup: Optional[Setup] = None, **kwargs: Any) -> tuple[Any, Any, Any]:
    """``open_clip.create_model_and_transforms`` with the setup's model kwargs and the whole-image training
    transform of models that render their views in forward."""
    from . import register

    register()
    import open_clip

    model, train, val = open_clip.create_model_and_transforms(model_name, **merge_model_kwargs(setup, kwargs))
    train, val = whole_image_transforms(model, (train, val), kwargs.get("aug_cfg"))
    return model, train, val


def install_open_clip_train_hooks(setup: Setup, log_every: Callable[[argparse.Namespace], int]) -> Any:
    """Route one ``open_clip_train.main.main`` run through the method: its loss (with metric logging and the
    non-finite guard), tokenizer and model kwargs. Returns the installed non-finite guard."""
    import open_clip_train.main as ocm

    from .train_hooks import NonFiniteGuard, TrainLossAdapter

    guard = NonFiniteGuard().install()
    upstream_create_model_and_transforms = ocm.create_model_and_transforms
    upstream_get_tokenizer = ocm.get_tokenizer

    def create_loss(args: argparse.Namespace) -> nn.Module:
        loss = setup.build_loss(args)
        if setup.spec.marker is None:
            return loss
        guard.adapter = TrainLossAdapter(loss, log_every=log_every(args), is_master=args.rank == 0)
        return guard.adapter

    def create_model_and_transforms(model_name: str, *args: Any, **kwargs: Any) -> tuple[Any, Any, Any]:
        model, train, val = upstream_create_model_and_transforms(model_name, *args, **merge_model_kwargs(setup, kwargs))
        train, val = whole_image_transforms(model, (train, val), kwargs.get("aug_cfg"))
        return model, train, val

    ocm.create_loss = create_loss
    ocm.create_model_and_transforms = create_model_and_transforms
    if setup.spec.wrap_tokenizer is not None:
        ocm.get_tokenizer = lambda *a, **kw: setup.wrap_tokenizer(upstream_get_tokenizer(*a, **kw))
    return guard
