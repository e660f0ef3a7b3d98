"""Configuration dataclasses for the CTR ranking models (``recsys_emb.models``).

One top-level :class:`ModelConfig` picks the model by ``name`` and holds one nested dataclass per
model family, so a YAML file can keep the settings of several models side by side and switch with
one key::

    model:
      name: dcnv2
      embedding_dim: 16
      dcnv2: {num_cross_layers: 3, low_rank_dim: null, structure: stacked, deep_layer_sizes: [512, 256]}

Defaults follow each paper's Criteo setup where it states one (see docs/models.md).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

MODEL_NAMES: tuple[str, ...] = ("dlrm", "dcnv2", "deepfm", "lr")
ACTIVATIONS: tuple[str, ...] = ("relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid")
DCN_STRUCTURES: tuple[str, ...] = ("stacked", "parallel")


def _choice_error(where: str, value: object, choices: tuple[str, ...]) -> ValueError:
    """Build an "unknown value" error with a did-you-mean hint."""
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"{where}: unknown value {value!r}{hint}; expected one of {', '.join(choices)}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive_int(where: str, value: object) -> None:
    if not _is_int(value) or value <= 0:  # type: ignore[operator]
        raise ValueError(f"{where} must be a positive int, got {value!r}")


def _check_layer_sizes(where: str, sizes: object, allow_empty: bool = True) -> None:
    if not isinstance(sizes, list) or not all(_is_int(s) for s in sizes):
        raise ValueError(f"{where} must be a list of ints, got {sizes!r}")
    if not sizes and not allow_empty:
        raise ValueError(f"{where} must not be empty")
    bad = [s for s in sizes if s <= 0]
    if bad:
        raise ValueError(f"{where} must hold positive layer sizes, got {sizes!r}")


def _check_mlp_options(where: str, activation: str, dropout: float, batch_norm: bool) -> None:
    if activation not in ACTIVATIONS:
        raise _choice_error(f"{where}.activation", activation, ACTIVATIONS)
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"{where}.dropout must be a float in [0, 1), got {dropout!r}")
    if not isinstance(batch_norm, bool):
        raise ValueError(f"{where}.batch_norm must be true or false, got {batch_norm!r}")


@dataclass
class DLRMConfig:
    """DLRM (Naumov et al. 2019) settings. Defaults: the reference's Criteo Kaggle setup."""

    # hidden sizes of the bottom MLP on dense features; a last layer of the shared embedding dim is
    # always appended (reference Criteo bottom MLP: 13-512-256-64-16)
    dense_arch_layer_sizes: list[int] = field(default_factory=lambda: [512, 256, 64])
    # hidden sizes of the top MLP; a final Linear -> 1 logit is always appended (reference: 512-256-1)
    over_arch_layer_sizes: list[int] = field(default_factory=lambda: [512, 256])
    activation: str = "relu"  # activation after every hidden layer (see ACTIVATIONS)
    dropout: float = 0.0  # dropout probability after every hidden activation (0 = off)
    batch_norm: bool = False  # BatchNorm1d between each hidden Linear and its activation

    def __post_init__(self) -> None:
        _check_layer_sizes("model.dlrm.dense_arch_layer_sizes", self.dense_arch_layer_sizes)
        _check_layer_sizes("model.dlrm.over_arch_layer_sizes", self.over_arch_layer_sizes)
        _check_mlp_options("model.dlrm", self.activation, self.dropout, self.batch_norm)


@dataclass
class DCNv2Config:
    """DCN-v2 (Wang et al. 2021) settings."""

    num_cross_layers: int = 3  # number of cross layers x_{l+1} = x0 * (W_l x_l + b_l) + x_l (0 = none)
    # None: full-rank W_l (d x d); an int r: low-rank W_l = U_l V_l^T with U_l, V_l of shape (d, r)
    # (the paper's mixture-free low-rank variant); r must be < d to save anything
    low_rank_dim: int | None = None
    # "stacked": x0 -> cross -> deep -> logit; "parallel": concat(cross(x0), deep(x0)) -> logit
    structure: str = "stacked"
    deep_layer_sizes: list[int] = field(default_factory=lambda: [512, 256])  # deep MLP hidden sizes ([] = cross only)
    activation: str = "relu"  # activation after every deep layer (see ACTIVATIONS)
    dropout: float = 0.0  # dropout probability after every deep activation (0 = off)
    batch_norm: bool = False  # BatchNorm1d between each deep Linear and its activation

    def __post_init__(self) -> None:
        if not _is_int(self.num_cross_layers) or self.num_cross_layers < 0:
            raise ValueError(f"model.dcnv2.num_cross_layers must be an int >= 0, got {self.num_cross_layers!r}")
        if self.low_rank_dim is not None:
            _check_positive_int("model.dcnv2.low_rank_dim (null = full rank)", self.low_rank_dim)
        if self.structure not in DCN_STRUCTURES:
            raise _choice_error("model.dcnv2.structure", self.structure, DCN_STRUCTURES)
        _check_layer_sizes("model.dcnv2.deep_layer_sizes", self.deep_layer_sizes)
        _check_mlp_options("model.dcnv2", self.activation, self.dropout, self.batch_norm)
        if self.num_cross_layers == 0 and not self.deep_layer_sizes:
            raise ValueError(
                "model.dcnv2 has num_cross_layers: 0 and deep_layer_sizes: [] -- the model would be a single "
                "linear layer; set at least one of them (or use name: lr)"
            )


@dataclass
class DeepFMConfig:
    """DeepFM (Guo et al. 2017) settings. Defaults: the paper's Criteo setup (400-400-400, dropout 0.5)."""

    deep_layer_sizes: list[int] = field(default_factory=lambda: [400, 400, 400])  # deep MLP hidden sizes
    activation: str = "relu"  # activation after every deep layer (see ACTIVATIONS)
    dropout: float = 0.5  # dropout probability after every deep activation (paper: 0.5)
    batch_norm: bool = False  # BatchNorm1d between each deep Linear and its activation

    def __post_init__(self) -> None:
        _check_layer_sizes("model.deepfm.deep_layer_sizes", self.deep_layer_sizes, allow_empty=False)
        _check_mlp_options("model.deepfm", self.activation, self.dropout, self.batch_norm)


@dataclass
class ModelConfig:
    """Which CTR model to build and its settings (see ``recsys_emb.models.build_model``)."""

    name: str = "dcnv2"  # one of dlrm | dcnv2 | deepfm | lr
    # dimension of the tables built from the data's vocab sizes; models read the actual per-feature
    # dims from the embedding module, so techniques may change them (DLRM/DeepFM need one shared dim)
    embedding_dim: int = 16
    # width of the per-id first-order weight tables of lr and deepfm; an id's weight is the MEAN of its
    # row (zero-initialised, so all columns stay equal: exactly one weight per id under Adam/Adagrad).
    # 4 because FBGEMM's sharded table kernels need dims that are multiples of 4; 1 works unsharded only
    first_order_dim: int = 4
    # initial values of the embedding tables: null = TorchRec's default uniform(+-sqrt(1/rows)) (the DLRM
    # reference); a number b = uniform(-b, b). FM-style models want small values (DeepFM's pairwise sum
    # over all fields explodes with the default on small tables): their configs set e.g. 0.001
    embedding_init_bound: float | None = None
    dlrm: DLRMConfig = field(default_factory=DLRMConfig)  # used when name == "dlrm"
    dcnv2: DCNv2Config = field(default_factory=DCNv2Config)  # used when name == "dcnv2"
    deepfm: DeepFMConfig = field(default_factory=DeepFMConfig)  # used when name == "deepfm"

    def __post_init__(self) -> None:
        if self.name not in MODEL_NAMES:
            raise _choice_error("model.name", self.name, MODEL_NAMES)
        _check_positive_int("model.embedding_dim", self.embedding_dim)
        _check_positive_int("model.first_order_dim", self.first_order_dim)
        if self.embedding_init_bound is not None and not self.embedding_init_bound > 0:
            raise ValueError(f"model.embedding_init_bound must be > 0 or null, got {self.embedding_init_bound!r}")
        for key, cls in (("dlrm", DLRMConfig), ("dcnv2", DCNv2Config), ("deepfm", DeepFMConfig)):
            if not isinstance(getattr(self, key), cls):
                raise ValueError(f"model.{key} must be a {cls.__name__}, got {type(getattr(self, key)).__name__}")
