"""recsys_emb."""
