"""Checkpoint conversion machinery, architecture-free: regex key tables (:mod:`.rules`), the strict
load report and the one mismatch error (:mod:`.report`), HF directory load/save through the
architecture registry (:mod:`.hf`), atomic directory writes (:mod:`.atomic_dir`) and the
sentence-transformers layout (:mod:`.sentence_transformers`). Each architecture's key table lives
in its own folder, ``jaxbert/models/<family>/hf.py``."""
