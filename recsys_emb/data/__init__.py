"""recsys_emb.data."""
