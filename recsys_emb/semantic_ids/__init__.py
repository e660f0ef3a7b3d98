"""Semantic IDs: content embeddings of item text, RQ-VAE codes with a collision suffix, SID tokenisers.

Pipeline (``recsys-emb sid embed|train|assign``): ``items.py`` reads item text, ``embed.py`` encodes it
(cached), ``rqvae.py``/``train.py`` learn L residual codebooks and assign codes, ``codes.py`` makes the
IDs unique and measures them, ``tokenizers.py`` turns IDs into table rows for
``recsys_emb.modules.semantic_ids`` (the ranking-feature module). See docs/techniques/semantic_ids.md.
"""

from recsys_emb.semantic_ids.codes import SemanticIds, add_collision_suffix, code_metrics
from recsys_emb.semantic_ids.config import SIDConfig
from recsys_emb.semantic_ids.rqvae import RQVAE, kmeans, nearest_code, residual_quantize
from recsys_emb.semantic_ids.train import assign_ids, evaluate_rqvae, load_rqvae, save_rqvae, train_rqvae

__all__ = [
    "RQVAE", "SIDConfig", "SemanticIds", "add_collision_suffix", "assign_ids", "code_metrics", "evaluate_rqvae",
    "kmeans", "load_rqvae", "nearest_code", "residual_quantize", "save_rqvae", "train_rqvae",
]
