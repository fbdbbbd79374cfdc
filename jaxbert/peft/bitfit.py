"""BitFit (Ben Zaken et al. 2022, arXiv 2106.10199): train only the bias terms (and the head).

Every leaf whose path matches ``bias_regex`` (default ``/bias$``: the biases of the q/k/v/output
projections, the feed-forward layers, the pooler and the LayerNorms) is trained, plus the task
head (``peft.head_regex``); every other leaf is frozen. Nothing is added to the model, so the
trained model is a plain BERT (merge = identity).
"""

from __future__ import annotations

import re

from jaxbert.peft.base import PeftError, PeftMethod, flatten, match_paths


class BitFit(PeftMethod):
    name = "bitfit"
    section = "bitfit"
    DEFAULTS = {"bias_regex": r"/bias$"}
    default_learning_rate = 1e-3

    def validate(self) -> None:
        try:
            self._rx = re.compile(self.bias_regex)
        except re.error as e:
            raise PeftError(f"peft.bitfit.bias_regex={self.bias_regex!r} is not a valid regex: {e}") from None

    def init(self, rng, params):
        match_paths(flatten(params), self.bias_regex, "peft.bitfit.bias_regex")  # error when nothing matches
        return params

    def is_trainable(self, path: str) -> bool:
        return bool(self._rx.search(path)) or self.is_head(path)
