"""Registry of EBC-compatible embedding techniques, selected by the ``embedding:`` config section.

A technique module registers a builder with its own options dataclass::

    @register_embedding("unified", UnifiedOptions)
    def build_unified(options: UnifiedOptions, tables: list[EmbeddingBagConfig], device, **context):
        return UnifiedEmbeddingBagCollection(...)

and an experiment selects it with::

    embedding:
      type: unified
      options: {num_rows: 100000}

``options`` is validated strictly against the options dataclass (unknown keys are errors with a
did-you-mean hint). ``tables`` are the plain per-feature tables the model would otherwise use (one
per sparse feature, sized by the vocabulary); ``context`` carries data facts a technique may need
(e.g. ``data``: the ``PreparedCTRData`` of the training split). ``type: ebc`` (the default) builds
no wrapper: the model uses a stock ``EmbeddingBagCollection(tables)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from recsys_emb.config.experiment import EmbeddingConfig
from recsys_emb.config.io import ConfigError, from_dict

Builder = Callable[..., nn.Module]

# technique name -> module that registers it (imported lazily, so `type: x` works without an import)
KNOWN_TECHNIQUES: dict[str, str] = {
    "unified": "recsys_emb.modules.unified",
    "dnis": "recsys_emb.modules.dnis",
    "optembed": "recsys_emb.modules.optembed",
    "semantic_ids": "recsys_emb.modules.semantic_ids",
}

_REGISTRY: dict[str, tuple[type, Builder]] = {}


def register_embedding(name: str, options_cls: type) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(options, tables, device, **context) -> nn.Module`` as ``name``."""

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY and _REGISTRY[name][1] is not builder:
            raise ValueError(f"embedding technique '{name}' is registered twice")
        _REGISTRY[name] = (options_cls, builder)
        return builder

    return decorate


def available_techniques() -> list[str]:
    return sorted({"ebc", *KNOWN_TECHNIQUES, *_REGISTRY})


def _lookup(name: str) -> tuple[type, Builder]:
    if name not in _REGISTRY and name in KNOWN_TECHNIQUES:
        try:
            importlib.import_module(KNOWN_TECHNIQUES[name])
        except ModuleNotFoundError as err:
            raise ConfigError(f"embedding.type '{name}' is not available in this version ({err})") from err
    if name not in _REGISTRY:
        raise ConfigError(f"embedding.type: unknown technique '{name}' (choose from {available_techniques()})")
    return _REGISTRY[name]


def build_embedding(
    cfg: EmbeddingConfig,
    tables: Sequence[EmbeddingBagConfig],
    device: torch.device | str | None = None,
    **context: Any,
) -> nn.Module | None:
    """The EBC-compatible module ``cfg`` selects, or None for the plain ``EmbeddingBagCollection``."""
    if cfg.type == "ebc":
        if cfg.options:
            raise ConfigError(f"embedding.options must be empty for type 'ebc', got keys {sorted(cfg.options)}")
        return None
    options_cls, builder = _lookup(cfg.type)
    options = from_dict(options_cls, dict(cfg.options), where="embedding.options")
    return builder(options, list(tables), device, **context)
