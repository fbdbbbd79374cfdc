"""DistilBERT (Sanh et al. 2019; transformers ``DistilBertModel``) on the configurable block: a post-LN
BERT block without token-type embeddings. This folder holds only its HF format and registry entry."""
