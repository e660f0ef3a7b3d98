"""recsys_emb.ops."""
