"""Masked next-token prediction (MNTP; LLM2Vec, BehnamGhader et al. 2024, arXiv 2404.05961 §2.2).

A decoder switched to bidirectional attention is adapted by masking a fraction of the input
tokens and predicting each masked token ``i`` from the logits at position ``i - 1`` (the
position whose LM head was trained to predict token ``i``), not from position ``i`` as in BERT's
MLM. Everything else is BERT masking: of the selected tokens 80% become the mask token, 10% a
random token, 10% stay (LLM2Vec uses transformers' ``DataCollatorForLanguageModeling`` with
``mlm_probability`` 0.2 for Llama and ``_`` as the mask token).

Label convention: ``labels [b, l]`` hold the original id at selected positions and
:data:`IGNORE` elsewhere (``-100``, as transformers). :func:`shift_labels` turns them into
per-logit-position targets: ``targets[:, i] = labels[:, i + 1]`` and ``targets[:, l - 1] =
IGNORE``. The first real token of a row (position 0 with right padding, the first non-pad
position with left padding) is never selected: no real position precedes it.

::

    ids, labels = mntp_mask(rng, input_ids, attention_mask, mask_token_id=tok.convert_tokens_to_ids("_"),
                            vocab_size=cfg.vocab_size)
    logits = model.apply({"params": params}, ids, mask, attention_mode="bidirectional", return_logits=True).logits
    loss, metrics = mntp_loss(logits, labels)
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

IGNORE = -100


def default_mask_token_id(tokenizer: Any) -> int:
    """The tokenizer's mask token if it has one, else the id of ``"_"`` (LLM2Vec's ``blank`` choice)."""
    if getattr(tokenizer, "mask_token_id", None) is not None:
        return int(tokenizer.mask_token_id)
    ids = tokenizer("_", add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"'_' is not a single token for this tokenizer ({ids}); pass mask_token_id explicitly")
    return int(ids[0])


def mntp_mask(rng: jax.Array | np.random.Generator | int, input_ids: np.ndarray, attention_mask: np.ndarray, *,
              mask_token_id: int, vocab_size: int, mask_prob: float = 0.2, replace_prob: float = 0.8,
              random_prob: float = 0.1, special_ids: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Select ``mask_prob`` of the maskable tokens and corrupt them BERT-style (host-side, numpy).

    Maskable: real tokens (``attention_mask == 1``) that are not the first real token of their
    row and not in ``special_ids``. Of the selected, ``replace_prob`` become ``mask_token_id``,
    ``random_prob`` a uniform random id in ``[0, vocab_size)``, the rest stay. Returns
    ``(corrupted_ids, labels)``, labels :data:`IGNORE` where not selected. ``rng``: a numpy
    Generator, an int seed, or a jax key (converted to a seed).
    """
    if not 0.0 <= mask_prob <= 1.0 or replace_prob + random_prob > 1.0 + 1e-9:
        raise ValueError(f"bad masking probabilities: mask_prob={mask_prob}, replace_prob={replace_prob}, "
                         f"random_prob={random_prob}")
    if isinstance(rng, np.random.Generator):
        gen = rng
    elif isinstance(rng, (int, np.integer)):
        gen = np.random.default_rng(int(rng))
    else:
        gen = np.random.default_rng(np.asarray(jax.random.key_data(rng)).ravel().tolist())
    ids = np.asarray(input_ids).astype(np.int32)
    mask = np.asarray(attention_mask).astype(bool)
    maskable = mask & (np.cumsum(mask, axis=1) > 1)
    if len(special_ids):
        maskable &= ~np.isin(ids, np.asarray(list(special_ids)))
    selected = maskable & (gen.random(ids.shape) < mask_prob)
    labels = np.where(selected, ids, IGNORE).astype(np.int32)
    u = gen.random(ids.shape)
    to_mask = selected & (u < replace_prob)
    to_random = selected & (u >= replace_prob) & (u < replace_prob + random_prob)
    out = np.where(to_mask, mask_token_id, ids)
    out = np.where(to_random, gen.integers(0, vocab_size, ids.shape), out).astype(np.int32)
    return out, labels


def shift_labels(labels: jax.Array) -> jax.Array:
    """Targets per logit position: ``targets[:, i] = labels[:, i + 1]``, last position :data:`IGNORE`."""
    labels = jnp.asarray(labels)
    pad = jnp.full(labels.shape[:-1] + (1,), IGNORE, labels.dtype)
    return jnp.concatenate([labels[..., 1:], pad], axis=-1)


def mntp_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy of the masked tokens, each predicted from the previous position's logits.

    ``logits [b, l, vocab]`` (any float dtype; computed in float32), ``labels [b, l]`` as from
    :func:`mntp_mask`. Returns ``(loss, {"loss", "accuracy", "num_masked"})``; a batch without a
    masked token gives loss 0.
    """
    targets = shift_labels(labels)
    valid = targets != IGNORE
    safe = jnp.where(valid, targets, 0)
    logits = logits.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    n = valid.sum()
    denom = jnp.maximum(n, 1).astype(jnp.float32)
    loss = jnp.where(valid, ce, 0.0).sum() / denom
    acc = jnp.where(valid, jnp.argmax(logits, -1) == safe, False).sum() / denom
    return loss, {"loss": loss, "accuracy": acc, "num_masked": n}
