"""recsys_emb.train."""
