"""Lightweight fine-tuning: train only the embeddings + head, or only the last layer + head.

The two "lightweight" variants compared with full fine-tuning and prefix tuning in Zlotchevski
et al. 2022, "Exploring and Evaluating Personalized Models for Code Generation" (arXiv
2208.13928), transposed to an encoder classifier:

* ``variant='embeddings'``: the token embedding table ``encoder/embeddings/word_embeddings``
  (the paper's "token embeddings and softmax layer only"; position / token-type tables and the
  embedding LayerNorm stay frozen) + the task head (``peft.head_regex``: pooler + classifier);
* ``variant='last_layer'``: the last transformer block ``encoder/layer_{L-1}/...`` + the pooler
  (``encoder/pooler/...``, which sits between the last block and the head) + the task head.

Everything else is frozen through optimizer labels; nothing is added, so merge = identity.
"""

from __future__ import annotations

import re

from jaxbert.peft.base import PeftError, PeftMethod, flatten, num_layers

VARIANTS = ("embeddings", "last_layer")


class Lightweight(PeftMethod):
    name = "lightweight"
    section = "lightweight"
    DEFAULTS = {"variant": "embeddings"}
    default_learning_rate = 5e-4

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise PeftError(f"peft.lightweight.variant={self.variant!r}; expected one of {VARIANTS}")
        self._rx = None

    def init(self, rng, params):
        self._bind(list(flatten(params)))
        return params

    def _bind(self, paths) -> None:
        if self.variant == "embeddings":
            rx = r"(^|/)embeddings/word_embeddings/"
        else:
            n = num_layers(paths)
            if n == 0:
                raise PeftError(f"peft.lightweight.variant='last_layer' but no 'layer_<i>' parameters in "
                                f"{sorted(paths)[:6]}")
            rx = rf"(^|/)layer_{n - 1}/|(^|/)pooler/"
        self._rx = re.compile(rx)
        if not any(self._rx.search(p) for p in paths):
            raise PeftError(f"peft.lightweight.variant={self.variant!r} selects no parameter among "
                            f"{sorted(paths)[:6]}...")

    def labels(self, params):
        self._bind(list(flatten(params)))
        return super().labels(params)

    def trainable_paths(self, params):
        self._bind(list(flatten(params)))
        return super().trainable_paths(params)

    def is_trainable(self, path: str) -> bool:
        if self._rx is None:
            raise PeftError("Lightweight.is_trainable called before the method saw the params (call labels/init)")
        return bool(self._rx.search(path)) or self.is_head(path)
