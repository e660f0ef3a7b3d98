"""recsys_emb.modules."""
