"""Building blocks shared by the CTR models: MLP, DenseArch, LinearTerm, the CTRModel base class.

Shape glossary: B batch size, F number of sparse features, D embedding dim, D_dense number of dense
features.

Every module here keeps its parameters in ``nn.Linear`` / ``nn.BatchNorm1d`` children or defines
``reset_parameters()``, so a model built on the ``meta`` device is initialised correctly when
TorchRec's ``DistributedModelParallel`` materialises it (it calls ``reset_parameters`` on every
module that owned meta parameters). Buffers are avoided for the same reason (DMP fills meta buffers
with zeros).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torchrec.modules.embedding_modules import EmbeddingBagCollectionInterface, EmbeddingCollectionInterface

from recsys_emb.config.model import ACTIVATIONS

Device = torch.device | str | None

_ACTIVATION_CLASSES: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
assert set(_ACTIVATION_CLASSES) == set(ACTIVATIONS), "config.model.ACTIVATIONS and models.common disagree"


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module by name.

    Args:
        name: one of ``recsys_emb.config.model.ACTIVATIONS``.
    """
    try:
        return _ACTIVATION_CLASSES[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}") from None


class MLP(nn.Module):
    """Stack of ``Linear -> [BatchNorm1d] -> activation -> [Dropout]`` blocks.

    Every layer, the last one included, is followed by the activation; add a plain ``nn.Linear`` for
    an un-activated output (logit).

    Args:
        in_features: input width D_in.
        layer_sizes: output width of each layer; empty means identity.
        activation: activation name (``ACTIVATIONS``).
        dropout: dropout probability after each activation (0 disables it).
        batch_norm: insert ``BatchNorm1d`` between each Linear and its activation.
        device: device of the parameters (``"meta"`` allowed).

    Example::

        mlp = MLP(13, [64, 16])
        y = mlp(torch.randn(4, 13))  # (4, 16)
    """

    def __init__(
        self,
        in_features: int,
        layer_sizes: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        device: Device = None,
    ) -> None:
        super().__init__()
        if in_features < 0:
            raise ValueError(f"MLP in_features must be >= 0, got {in_features}")
        layers: list[nn.Module] = []
        width = in_features
        for size in layer_sizes:
            if size <= 0:
                raise ValueError(f"MLP layer sizes must be positive, got {list(layer_sizes)}")
            layers.append(nn.Linear(width, size, device=device))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size, device=device))
            layers.append(make_activation(activation))
            if dropout > 0.0:
                layers.append(nn.Dropout(dropout))
            width = size
        self.layers = nn.Sequential(*layers)
        self.in_features = in_features
        self.out_features = width

    def forward(self, x: Tensor) -> Tensor:
        """Args:
        x: (B, D_in) input.

        Returns:
            (B, out_features); ``x`` itself when there are no layers.
        """
        return self.layers(x)


class DenseArch(nn.Module):
    """MLP over the dense (continuous) features, producing a (B, out_features) vector.

    Args:
        num_dense_features: D_dense.
        layer_sizes: output width of each layer (the last one is ``out_features``).
        activation: activation name.
        dropout: dropout probability after each activation.
        batch_norm: BatchNorm1d between each Linear and its activation.
        device: parameter device.
    """

    def __init__(
        self,
        num_dense_features: int,
        layer_sizes: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        device: Device = None,
    ) -> None:
        super().__init__()
        if not layer_sizes:
            raise ValueError("DenseArch needs at least one layer")
        self.mlp = MLP(num_dense_features, layer_sizes, activation, dropout, batch_norm, device)
        self.out_features = self.mlp.out_features

    def forward(self, dense_features: Tensor) -> Tensor:
        """Args:
        dense_features: (B, D_dense).

        Returns:
            (B, out_features).
        """
        return self.mlp(dense_features)


class LinearTerm(nn.Module):
    """Zero-initialised affine scalar term ``x @ w + b`` -> (B,); works with ``in_features == 0``.

    Used for the dense part (and global bias) of logistic regression and the FM first-order term.

    Args:
        in_features: D_in (may be 0, then the output is the bias alone).
        device: parameter device.
    """

    def __init__(self, in_features: int, device: Device = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, device=device))
        self.bias = nn.Parameter(torch.empty(1, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero the weight and bias (the usual initialisation of a linear model)."""
        with torch.no_grad():
            self.weight.zero_()
            self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """Args:
        x: (B, D_in).

        Returns:
            (B,) the affine term.
        """
        return x @ self.weight + self.bias  # (B,)


def shared_dim(dims: Sequence[tuple[str, int]], model: str) -> int:
    """Return the one embedding dim all features share, or raise a clear error.

    Args:
        dims: ``[(feature_name, dim), ...]`` as from ``output_feature_dims``.
        model: model name for the error message.
    """
    if not dims:
        raise ValueError(f"{model} needs at least one sparse feature, the embedding module has none")
    by_dim: dict[int, list[str]] = {}
    for name, dim in dims:
        by_dim.setdefault(dim, []).append(name)
    if len(by_dim) > 1:
        groups = "; ".join(
            f"dim {d}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''} ({len(names)} features)"
            for d, names in sorted(by_dim.items())
        )
        raise ValueError(
            f"{model} needs every sparse feature to have the same embedding dim, but the embedding module "
            f"outputs mixed dims ({groups}); give every table the same embedding_dim or use a model that "
            "accepts mixed dims (name: dcnv2)"
        )
    return dims[0][1]


def _sum_aux(modules: Sequence[nn.Module | None]) -> Tensor | None:
    total: Tensor | None = None
    for module in modules:
        fn = getattr(module, "aux_loss", None) if module is not None else None
        if callable(fn):
            value = fn()
            if value is not None:
                total = value if total is None else total + value
    return total


class CTRModel(nn.Module):
    """Base class of the CTR models: ``forward(dense_features, sparse_features) -> logits (B,)``.

    The EBC-compatible embedding module lives at ``self.embedding`` (and DeepFM's first-order tables at
    ``self.first_order``); DistributedModelParallel shards them wherever they sit.
    """

    embedding: nn.Module

    def aux_modules(self) -> list[nn.Module | None]:
        """Submodules whose ``aux_loss()`` the model adds up (by default: the embedding module)."""
        return [self.embedding]

    def aux_loss(self) -> Tensor | None:
        """Sum of the auxiliary losses of :meth:`aux_modules` (scalar tensor), or None when none has one."""
        return _sum_aux(self.aux_modules())


def split_named_parameters(model: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """Split parameters into (embedding-table params, dense params) for separate optimizers.

    Table params are those owned by any torchrec ``EmbeddingBagCollection``/``EmbeddingCollection``
    (at any depth, e.g. inside a technique's wrapper); everything else, including a technique's small
    post-lookup parameters, is dense. Use on an unsharded model; under DistributedModelParallel, tables
    have fused optimizers and ``torchrec.optim.optimizers.in_backward_optimizer_filter`` does this.

    Args:
        model: any module.
    """
    table_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, (EmbeddingBagCollectionInterface, EmbeddingCollectionInterface)):
            table_ids.update(id(p) for p in module.parameters())
    tables: dict[str, nn.Parameter] = {}
    dense: dict[str, nn.Parameter] = {}
    for name, param in model.named_parameters():
        (tables if id(param) in table_ids else dense)[name] = param
    return tables, dense
