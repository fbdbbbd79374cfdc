"""BERT presets: Google's compact BERTs (Turc et al. 2019, "Well-Read Students"), the two classic
sizes, and the sentence-transformers/all-MiniLM-L6-v2 shape."""

from __future__ import annotations

from typing import Callable

from jaxbert.models.bert.model import BertConfig


def _bert(layers: int, hidden: int, heads: int, **kw) -> Callable[[], BertConfig]:
    return lambda: BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                              intermediate_size=4 * hidden, **kw)


PRESETS: dict[str, Callable[[], BertConfig]] = {
    "bert-tiny": _bert(2, 128, 2),
    "bert-mini": _bert(4, 256, 4),
    "bert-small": _bert(4, 512, 8),
    "bert-medium": _bert(8, 512, 8),
    "bert-base": _bert(12, 768, 12),
    "bert-large": _bert(24, 1024, 16),
    "minilm-l6-h384": _bert(6, 384, 12),
}
