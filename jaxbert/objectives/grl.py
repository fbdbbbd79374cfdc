"""Generation-augmented representation learning (GRL; ULLME, Le et al. 2024, nlp-uoregon/ullme).

One decoder, two attention modes (:class:`jaxbert.models.llm.LlmModel`):

* **bidirectional** mode embeds queries and candidate passages (pooled) -> dual scores
  ``s[i, c] = cos(q_i, d_ic)``;
* **causal** mode scores each candidate passage as a continuation of its query -> generation
  scores ``g[i, c]`` = mean token log-probability of the passage tokens given the query.

Loss::

    L = L_contrastive + L_gen + KL( softmax(g) || softmax(s / tau) )

``L_contrastive``: InfoNCE of queries against candidates (:func:`jaxbert.objectives.llm_embedding.contrastive_loss`;
candidate 0 of each query is its positive, the others hard negatives). ``L_gen``: negative mean
token log-likelihood of the positive passage given the query (ULLME's ``sft`` generation loss).
KL: the generation distribution (detached, the teacher) against the tempered dual-score
distribution, ULLME's ``KLLoss`` (``KLDivLoss(log_softmax(s / tau), softmax(g).detach())``,
batch mean).

**Gradient of the KL term.** In ``ullme/trainer/gradcache_trainer.py`` the step backpropagates only
the contrastive surrogate (``fabric.backward(surrougate)``); ``gen_loss`` and ``kl_loss`` are
computed and logged but reach no parameter. Here, by default, both really train the model: the
KL gradient flows into the embedding scores ``s`` (and through them into the encoder), and L_gen
trains the causal LM. ``kl_gradient=False`` / ``gen_gradient=False`` reproduce the reference:
the terms are still computed (and reported in the metrics and the returned loss value) but wrapped in
``stop_gradient``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbert.objectives.llm_embedding import contrastive_loss, normalize


def token_log_probs(logits: jax.Array, input_ids: jax.Array) -> jax.Array:
    """``log p(token_i | tokens < i)`` at each position ``i >= 1`` (position 0 gets 0). ``[b, l]`` float32."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    lp = jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1)[..., 0]
    return jnp.concatenate([jnp.zeros_like(lp[:, :1]), lp], axis=1)


def mean_target_log_prob(logits: jax.Array, input_ids: jax.Array, target_mask: jax.Array) -> jax.Array:
    """Mean log-probability of the tokens where ``target_mask`` is 1 (each from the previous position).

    ``target_mask`` must be 0 at position 0 of each row. ``[b]`` float32 (0 for an empty target).
    """
    lp = token_log_probs(logits, input_ids)
    m = target_mask.astype(jnp.float32)
    return (lp * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0)


def kl_gen_to_dual(gen_scores: jax.Array, dual_scores: jax.Array, temperature: float) -> jax.Array:
    """``KL(softmax(g) || softmax(s / tau))`` averaged over rows; ``g`` detached. ``[b, c]`` inputs."""
    p = jax.nn.softmax(jax.lax.stop_gradient(gen_scores).astype(jnp.float32), axis=-1)
    log_q = jax.nn.log_softmax(dual_scores.astype(jnp.float32) / temperature, axis=-1)
    return jnp.mean(jnp.sum(p * (jnp.log(jnp.maximum(p, 1e-30)) - log_q), axis=-1))


def grl_loss(q: jax.Array, d: jax.Array, gen_logits: jax.Array, gen_ids: jax.Array, gen_target: jax.Array, *,
             temperature: float = 0.05, kl_temperature: float | None = None, gen_weight: float = 1.0,
             kl_weight: float = 1.0, kl_gradient: bool = True, gen_gradient: bool = True,
             focal_gamma: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The GRL loss of one batch from the model's outputs; returns ``(loss, metrics)``.

    * ``q [b, e]``: pooled query embeddings (bidirectional mode),
    * ``d [b, c, e]``: pooled candidate embeddings; candidate 0 is the positive, 1.. hard negatives,
    * ``gen_logits [b, c, lg, vocab]``: causal-mode logits of "query followed by candidate ``c``",
      ``gen_ids [b, c, lg]`` those rows' token ids and ``gen_target [b, c, lg]`` 1 on the
      candidate's tokens (0 at position 0).

    ``kl_temperature`` defaults to ``temperature`` (ULLME uses the contrastive temperature).
    """
    kl_t = temperature if kl_temperature is None else kl_temperature
    b, c, _ = d.shape
    con, metrics = contrastive_loss(q, d[:, 0], d[:, 1:] if c > 1 else None, temperature=temperature,
                                    focal_gamma=focal_gamma)
    dual = jnp.einsum("be,bce->bc", normalize(q), normalize(d))
    lg = gen_ids.shape[-1]
    g = mean_target_log_prob(gen_logits.reshape(b * c, lg, -1), gen_ids.reshape(b * c, lg),
                             gen_target.reshape(b * c, lg)).reshape(b, c)
    gen = -jnp.mean(g[:, 0])
    kl = kl_gen_to_dual(g, dual, kl_t)
    gen_term = gen if gen_gradient else jax.lax.stop_gradient(gen)
    kl_term = kl if kl_gradient else jax.lax.stop_gradient(kl)
    loss = con + gen_weight * gen_term + kl_weight * kl_term
    metrics.update(loss=loss, gen_loss=gen, kl_loss=kl,
                   gen_accuracy=jnp.mean(jnp.argmax(g, -1) == 0), dual_accuracy=jnp.mean(jnp.argmax(dual, -1) == 0))
    return loss, metrics
