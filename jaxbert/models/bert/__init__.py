"""BERT (Devlin et al. 2019) and its compact variants (MiniLM-shaped, Well-Read Students' grid)."""
