"""The contract every embedding module a recsys_emb model accepts must meet ("EBC-compatible").

An EBC-compatible module ``m`` maps a ``KeyedJaggedTensor`` to a pooled ``KeyedTensor`` with one key
per sparse feature, exactly like ``torchrec.EmbeddingBagCollection``, and describes its tables with
``m.embedding_bag_configs()``. A technique whose output dims differ from its tables' dims (e.g. a
shared table whose probes are concatenated) defines ``m.output_feature_dims()``.
"""

from __future__ import annotations

from torch import nn


def output_feature_dims(module: nn.Module) -> list[tuple[str, int]]:
    """Return ``[(feature_name, output_dim), ...]`` in the order of the module's ``KeyedTensor`` keys.

    Args:
        module: an ``EmbeddingBagCollection`` or any module meeting the contract above.

    Raises:
        TypeError: when the module defines neither ``output_feature_dims`` nor ``embedding_bag_configs``.
    """
    custom = getattr(module, "output_feature_dims", None)
    if callable(custom):
        return [(str(name), int(dim)) for name, dim in custom()]
    configs = getattr(module, "embedding_bag_configs", None)
    if not callable(configs):
        raise TypeError(
            f"{type(module).__name__} is not EBC-compatible: it needs an embedding_bag_configs() method "
            "(like torchrec.EmbeddingBagCollection) or an output_feature_dims() method"
        )
    return [(name, int(cfg.embedding_dim)) for cfg in configs() for name in cfg.feature_names]
