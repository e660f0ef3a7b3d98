"""recsys_emb.distributed."""
