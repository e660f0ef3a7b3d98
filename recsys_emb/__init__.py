"""recsys_emb: embedding techniques for recommender systems on TorchRec and FBGEMM."""

__version__ = "0.1.0"
