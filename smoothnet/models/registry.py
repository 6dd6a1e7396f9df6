"""One registry for every model of the package: ``build_model(name, ...)`` builds any of them.

Each model family lives in its own module and registers thin constructors with
:func:`register_model` (the timm pattern). Tests iterate over :func:`list_models`, so a newly
registered model is tested the moment it exists.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """A registered constructor and what it supports."""

    name: str
    constructor: Callable[..., nn.Module]
    description: str
    image_sizes: tuple[int, ...] = (32, 224)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, description: str, image_sizes: tuple[int, ...] = (32, 224)
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``fn(num_classes, image_size, **options) -> nn.Module`` under ``name``."""

    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, fn, description, image_sizes)
        return fn

    return decorate


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _import_model_modules()
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; a clear error listing valid names otherwise."""
    _import_model_modules()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def model_options(name: str) -> list[str]:
    """Keyword options the constructor of ``name`` accepts besides num_classes and image_size."""
    signature = inspect.signature(model_entry(name).constructor)
    return [p for p in signature.parameters if p not in ("num_classes", "image_size")]


def build_model(name: str, num_classes: int = 10, image_size: int = 32, **options) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: a name from :func:`list_models`, e.g. ``"smoothnet"`` or ``"resnet18"``.
        num_classes: size of the classification head.
        image_size: input resolution (32 for CIFAR-10, 224 for ImageNette); some models adapt
            their stem to it.
        **options: model-specific options; unknown ones raise a ``ValueError`` listing the valid ones.
    """
    entry = model_entry(name)
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"model {name!r} does not accept option(s) {unknown}; valid options: {valid or 'none'}"
        )
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if image_size not in entry.image_sizes:
        raise ValueError(
            f"model {name!r} supports image_size in {list(entry.image_sizes)}, got {image_size!r}"
        )
    return entry.constructor(num_classes=num_classes, image_size=image_size, **options)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _import_model_modules() -> None:
    # Importing the family modules runs their @register_model decorators.
    from smoothnet.models import baselines, literature, smoothnet, wrn  # noqa: F401
