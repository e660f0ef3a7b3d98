"""recsys_emb.config."""
