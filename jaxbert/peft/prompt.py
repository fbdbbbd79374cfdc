"""Prompt tuning (Lester et al. 2021, arXiv 2104.08691): trained soft-prompt vectors in the input.

``length`` trained vectors ``encoder/soft_prompt/embedding [length, hidden]`` are inserted into the
embedded sequence through the encoder's ``embeddings`` extension site (after the embedding
LayerNorm), with attention-mask ones for them. ``position='after_cls'`` (default) inserts them
right after ``[CLS]``, so the pooler and ``[CLS]``-based heads still read the real ``[CLS]``;
``position='start'`` prepends them (peft's layout). The sequence the layers see is ``length``
tokens longer. ``length=0`` reproduces the base model exactly.

Initialisation (``init_from``):

* ``'vocab'`` (Lester et al.'s "sampled vocab"): token ids drawn uniformly (with the run's seed)
  from ``vocab_range`` (default ``[1996, 6996)``: in the BERT uncased vocabulary these are the
  most frequent whole words; lower ids are ``[unused]``, special tokens and single characters);
* ``'text'``: the tokens of ``init_text`` (no special tokens), repeated or cut to ``length``;
* ``'random'``: ``N(0, 0.02)``.

For ``vocab`` / ``text`` the vectors are what the encoder itself produces at this site for those
tokens: ``LayerNorm(word[id] + position[1 + j] + token_type[0])`` with the pretrained embedding
tables, so a text-initialised prompt starts as that text would have been embedded.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from jaxbert.models.layers.extensions import Extension
from jaxbert.peft.base import PeftError, PeftMethod, flatten, unflatten

POSITIONS = ("after_cls", "start")
INITS = ("vocab", "text", "random")


class SoftPrompt(nn.Module):
    """``(x [b, l, e], mask [b, l], deterministic) -> (x [b, l + p, e], mask [b, l + p])``."""

    length: int
    features: int
    position: str = "after_cls"
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask, deterministic: bool = True):
        prompt = self.param("embedding", nn.initializers.normal(0.02), (self.length, self.features), self.param_dtype)
        b = x.shape[0]
        p = jnp.broadcast_to(prompt.astype(x.dtype)[None], (b, self.length, self.features))
        pm = jnp.ones((b, self.length), mask.dtype)
        if self.position == "start":
            return jnp.concatenate([p, x], 1), jnp.concatenate([pm, mask], 1)
        return (jnp.concatenate([x[:, :1], p, x[:, 1:]], 1),
                jnp.concatenate([mask[:, :1], pm, mask[:, 1:]], 1))


@dataclasses.dataclass(frozen=True)
class PromptExtension(Extension):
    site = "embeddings"
    name = "soft_prompt"
    length: int = 20
    position: str = "after_cls"

    def build(self, config, layer_index, name):
        return SoftPrompt(self.length, config.hidden_size, self.position, param_dtype=config.storage_dtype, name=name)


class PromptTuning(PeftMethod):
    """Trained soft-prompt embeddings; options ``length`` (20), ``position``, ``init_from``, ``init_text``,
    ``vocab_range``, ``init_token_ids`` (filled from ``init_text`` by :func:`jaxbert.peft.build`)."""

    name = "prompt"
    section = "prompt"
    DEFAULTS = {"length": 20, "position": "after_cls", "init_from": "vocab", "init_text": None,
                "vocab_range": (1996, 6996), "init_token_ids": None}
    default_learning_rate = 3e-2
    mergeable = False

    def validate(self) -> None:
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 0:
            raise PeftError(f"peft.prompt.length must be an int >= 0, got {self.length!r}")
        if self.position not in POSITIONS:
            raise PeftError(f"peft.prompt.position={self.position!r}; expected one of {POSITIONS}")
        if self.init_from not in INITS:
            raise PeftError(f"peft.prompt.init_from={self.init_from!r}; expected one of {INITS}")
        if self.init_from == "text" and not self.init_token_ids:
            raise PeftError("peft.prompt.init_from='text' needs peft.prompt.init_text (tokenised with the run's "
                            "tokenizer) or init_token_ids")
        lo, hi = self.vocab_range
        if self.init_from == "vocab" and self.length > 0 and not 0 <= lo < hi <= self.model_config.vocab_size:
            raise PeftError(f"peft.prompt.vocab_range={tuple(self.vocab_range)} must satisfy "
                            f"0 <= low < high <= vocab_size={self.model_config.vocab_size}")
        if self.init_token_ids:
            bad = [t for t in self.init_token_ids if not 0 <= int(t) < self.model_config.vocab_size]
            if bad:
                raise PeftError(f"peft.prompt.init_token_ids has ids {bad[:5]} outside the vocabulary "
                                f"(vocab_size={self.model_config.vocab_size})")

    def extensions(self):
        return (PromptExtension(self.length, self.position),)

    def token_ids(self, rng) -> jax.Array:
        if self.init_from == "text":
            ids = np.resize(np.asarray(self.init_token_ids, np.int32), self.length)
            return jnp.asarray(ids)
        lo, hi = self.vocab_range
        return jax.random.randint(rng, (self.length,), lo, hi)

    def init(self, rng, params):
        if self.init_from == "random" or self.length == 0:
            return params
        flat = flatten(params)
        root = "encoder/" if "encoder/embeddings/word_embeddings/embedding" in flat else ""
        emb = root + "embeddings/"
        needed = [emb + s for s in ("word_embeddings/embedding", "position_embeddings/embedding",
                                    "token_type_embeddings/embedding", "norm/scale", "norm/bias")]
        if any(n not in flat for n in needed):
            raise PeftError(f"peft.prompt.init_from={self.init_from!r} needs the BERT embedding tables {needed}")
        word, pos, typ, scale, bias = (flat[n] for n in needed)
        ids = self.token_ids(rng)
        x = word[ids] + pos[(1 + jnp.arange(self.length)) % pos.shape[0]] + typ[0]
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        x = (x - mu) / jnp.sqrt(var + self.model_config.layer_norm_eps) * scale + bias
        flat[root + "soft_prompt/embedding"] = x.astype(flat[root + "soft_prompt/embedding"].dtype)
        return unflatten(flat)
