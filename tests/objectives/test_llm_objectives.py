"""LLM-embedder objectives and tools on tiny inputs: poolings (left/right padding, embed mask), MNTP
masking and label shifting, focal weights, hard-negative mixing, model soup, GRL gradient flow."""

from __future__ import annotations

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxbert.compress.soup import SoupError, greedy_soup, soup
from jaxbert.models import registry
from jaxbert.models.llm.model import LlmModel
from jaxbert.models.llm.pooling import LLM_POOLINGS, canonical_pooling, instruction_embed_mask, llm_pool
from jaxbert.objectives import grl, mntp
from jaxbert.objectives.llm_embedding import (contrastive_loss, focal_weights, info_nce, mix_hard_negatives,
                                              normalize)
from jaxbert.tasks.llm_embedding import grl_forward

# ----------------------------------------------------------------------------- poolings


def _states(rng, lens, l, e=4, left=False):
    h = rng.standard_normal((len(lens), l, e)).astype(np.float32)
    mask = (np.arange(l)[None] < np.asarray(lens)[:, None]).astype(np.int32)
    if left:
        mask = mask[:, ::-1].copy()
    return h, mask


@pytest.mark.parametrize("left", [False, True], ids=["right", "left"])
def test_poolings_with_padding_and_embed_mask(left):
    rng = np.random.default_rng(0)
    h, mask = _states(rng, [5, 3, 1], 6, left=left)
    instr = np.array([2, 1, 0])
    emb_mask = instruction_embed_mask(mask, instr)
    for r in range(3):
        real = h[r][mask[r].astype(bool)]  # the row's real tokens in order
        pooled = real[instr[r]:]
        w = np.arange(1, len(pooled) + 1, dtype=np.float32)[:, None]
        expected = {"mean": pooled.mean(0), "weighted_mean": (pooled * w).sum(0) / w.sum(),
                    "last_token": pooled[-1], "first_token": pooled[0]}
        for mode, ref in expected.items():
            got = np.asarray(llm_pool(jnp.asarray(h), jnp.asarray(mask), mode, jnp.asarray(emb_mask)))[r]
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=f"{mode} row {r}")
        # Without an embed mask every real token is pooled.
        np.testing.assert_allclose(np.asarray(llm_pool(h, mask, "mean"))[r], real.mean(0), rtol=1e-5)
    assert emb_mask.sum(1).tolist() == [3, 2, 1]


def test_pooling_names_and_errors():
    assert canonical_pooling("eos") == canonical_pooling("last_token") == "last"
    assert canonical_pooling("weighted_mean") == "weightedmean" and canonical_pooling("first_token") == "cls"
    with pytest.raises(ValueError, match="unknown LLM pooling 'max_token'"):
        canonical_pooling("max_token")
    with pytest.raises(ValueError, match="embed_mask shape"):
        llm_pool(np.zeros((1, 3, 2)), np.ones((1, 3)), "mean", np.ones((1, 2)))
    with pytest.raises(ValueError, match="2 instruction lengths for 1 rows"):
        instruction_embed_mask(np.ones((1, 3)), [1, 2])
    assert set(LLM_POOLINGS.values()) == {"mean", "weightedmean", "last", "cls"}


# ----------------------------------------------------------------------------- MNTP


def test_mntp_shift_and_loss_use_previous_position():
    labels = np.array([[-100, 7, -100, 9]], np.int32)
    np.testing.assert_array_equal(np.asarray(mntp.shift_labels(labels)), [[7, -100, 9, -100]])
    # Logits that put all mass on the right token at position i - 1 give ~0 loss; at position i, high loss.
    v = 12
    good = np.full((1, 4, v), -20.0, np.float32)
    good[0, 0, 7] = good[0, 2, 9] = 20.0
    loss, m = mntp.mntp_loss(jnp.asarray(good), labels)
    assert float(loss) < 1e-6 and int(m["num_masked"]) == 2 and float(m["accuracy"]) == 1.0
    bad = np.full((1, 4, v), -20.0, np.float32)
    bad[0, 1, 7] = bad[0, 3, 9] = 20.0  # BERT-style (same position): wrong for MNTP
    # (positions 0 and 2 are uniform there: loss log(v), accuracy 0)
    bad_loss, bad_m = mntp.mntp_loss(jnp.asarray(bad), labels)
    np.testing.assert_allclose(float(bad_loss), np.log(v), rtol=1e-5)
    assert float(bad_m["accuracy"]) == 0.0
    empty = mntp.mntp_loss(jnp.asarray(good), np.full((1, 4), -100, np.int32))[0]
    assert float(empty) == 0.0


@pytest.mark.parametrize("left", [False, True])
def test_mntp_mask_never_selects_pad_or_first_token(left):
    rng = np.random.default_rng(1)
    ids = rng.integers(5, 100, (64, 16)).astype(np.int32)
    lens = rng.integers(2, 17, 64)
    mask = (np.arange(16)[None] < lens[:, None]).astype(np.int32)
    if left:
        mask = mask[:, ::-1].copy()
    out, labels = mntp.mntp_mask(0, ids, mask, mask_token_id=3, vocab_size=100, mask_prob=0.5, special_ids=[7])
    sel = labels != mntp.IGNORE
    first = np.cumsum(mask, 1) == 1
    assert not (sel & (mask == 0)).any() and not (sel & first & (mask == 1)).any()
    assert not (sel & (ids == 7)).any()
    np.testing.assert_array_equal(labels[sel], ids[sel])
    np.testing.assert_array_equal(out[~sel], ids[~sel])
    frac_mask_token = (out[sel] == 3).mean()
    assert 0.7 < frac_mask_token < 0.9 and 0.35 < sel.sum() / ((mask == 1) & ~first & (ids != 7)).sum() < 0.65


def test_mntp_loss_on_bidirectional_logits_trains():
    import optax

    cfg = registry.get("llama-tiny", num_hidden_layers=1)[0]
    model = LlmModel(cfg)
    params = nn.unbox(model.init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"])
    rng = np.random.default_rng(2)
    ids = rng.integers(5, 40, (4, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    x, labels = mntp.mntp_mask(1, ids, mask, mask_token_id=4, vocab_size=cfg.vocab_size, mask_prob=0.3)
    batch = {"input_ids": x, "attention_mask": mask, "labels": labels}
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        def loss_fn(p):  # the task's forward (bidirectional, logits) + the pure loss on arrays
            out = model.apply({"params": p}, batch["input_ids"], batch["attention_mask"],
                              attention_mode="bidirectional", return_logits=True)
            return mntp.mntp_loss(out.logits, batch["labels"])
        (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    losses = []
    for _ in range(15):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses


# ----------------------------------------------------------------------------- contrastive / KaLM aids


def test_info_nce_matches_manual_and_focal_weights():
    rng = np.random.default_rng(3)
    q, p, n = (rng.standard_normal(s).astype(np.float32) for s in ((3, 5), (3, 5), (3, 2, 5)))
    losses, pp = info_nce(q, p, n, temperature=0.1)
    qn, pn, nn_ = (np.asarray(normalize(x)) for x in (q, p, n))
    logits = np.concatenate([qn @ pn.T, qn @ nn_.reshape(6, 5).T], 1) / 0.1
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(np.asarray(losses), -logp[np.arange(3), np.arange(3)], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(pp), np.exp(logp[np.arange(3), np.arange(3)]), rtol=1e-5)
    w = focal_weights(jnp.array([0.0, 0.5, 1.0]), 2.0)
    np.testing.assert_allclose(np.asarray(w), [1.0, 0.25, 0.0])
    # Weights are detached: the gradient equals the weighted per-example gradients with w constant.
    g = jax.grad(lambda q: contrastive_loss(q, p, n, temperature=0.1, focal_gamma=2.0)[0])(jnp.asarray(q))
    w_const = np.asarray(focal_weights(pp, 2.0))
    g_ref = jax.grad(lambda q: jnp.mean(w_const * info_nce(q, p, n, temperature=0.1)[0]))(jnp.asarray(q))
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-5, atol=1e-7)
    l0, m0 = contrastive_loss(q, p, n, temperature=0.1, focal_gamma=0.0)
    np.testing.assert_allclose(float(l0), float(np.mean(np.asarray(losses))), rtol=1e-6)


def test_hard_negative_mixing_shapes_norm_and_pool():
    rng = np.random.default_rng(4)
    q = jnp.asarray(rng.standard_normal((4, 8)).astype(np.float32))
    negs = jnp.asarray(rng.standard_normal((4, 6, 8)).astype(np.float32))
    syn = mix_hard_negatives(jax.random.key(0), q, negs, num_synthetic=5, top_k=2, num_query_mixed=3,
                             max_query_mix=0.4)
    assert syn.shape == (4, 8, 8)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(syn), axis=-1), 1.0, rtol=1e-5)
    # Mixed negatives lie in the span of the top-2 hardest negatives of their query.
    qn, nn_ = np.asarray(normalize(q)), np.asarray(normalize(negs))
    for b in range(4):
        top = nn_[b][np.argsort(-(nn_[b] @ qn[b]))[:2]]
        coef, res, *_ = np.linalg.lstsq(top.T, np.asarray(syn[b, :5]).T, rcond=None)
        assert np.abs(top.T @ coef - np.asarray(syn[b, :5]).T).max() < 1e-5
        assert (coef >= -1e-5).all()  # convex (before normalisation) combinations
    # Query-mixed negatives stay closer to the negative than to the query (beta < 0.5).
    g = jax.grad(lambda q: mix_hard_negatives(jax.random.key(0), q, negs, num_synthetic=2, top_k=2).sum())(q)
    assert float(jnp.abs(g).max()) == 0.0  # detached
    loss, _ = contrastive_loss(q, q + 0.1, None, extra_negatives=syn)
    assert np.isfinite(float(loss))
    with pytest.raises(ValueError, match="top_k"):
        mix_hard_negatives(jax.random.key(0), q, negs, num_synthetic=1, top_k=7)


# ----------------------------------------------------------------------------- soup


def test_soup_uniform_weighted_and_errors():
    a = {"x": {"kernel": jnp.ones((2, 2))}, "b": jnp.zeros(3, jnp.bfloat16)}
    b = {"x": {"kernel": 3 * jnp.ones((2, 2))}, "b": jnp.full(3, 2.0, jnp.bfloat16)}
    u = soup([a, b])
    np.testing.assert_allclose(np.asarray(u["x"]["kernel"]), 2.0)
    assert u["b"].dtype == jnp.bfloat16 and float(u["b"][0]) == 1.0
    w = soup([a, b], weights=[3, 1])
    np.testing.assert_allclose(np.asarray(w["x"]["kernel"]), 1.5)
    with pytest.raises(SoupError, match="shape"):
        soup([a, {"x": {"kernel": jnp.ones((2, 3))}, "b": a["b"]}])
    with pytest.raises(SoupError, match="structure"):
        soup([a, {"x": a["x"]}])
    with pytest.raises(SoupError, match="weights"):
        soup([a, b], weights=[1, -1])
    params, chosen = greedy_soup([a, b], lambda p: -abs(float(p["x"]["kernel"][0, 0]) - 1.0))
    assert chosen == [0] and float(params["x"]["kernel"][0, 0]) == 1.0


# ----------------------------------------------------------------------------- GRL


def _grl_batch(rng, b=2, c=2, lq=5, ld=6, vocab=256):
    q = rng.integers(3, vocab, (b, lq)).astype(np.int32)
    d = rng.integers(3, vocab, (b, c, ld)).astype(np.int32)
    gen = np.concatenate([np.repeat(q[:, None], c, 1), d], axis=-1)
    target = np.concatenate([np.zeros((b, c, lq), np.int32), np.ones((b, c, ld), np.int32)], -1)
    return {"q_ids": q, "q_mask": np.ones_like(q), "d_ids": d, "d_mask": np.ones_like(d),
            "gen_ids": gen, "gen_mask": np.ones_like(gen), "gen_target": target}


def test_mean_target_log_prob_and_kl():
    logits = jnp.log(jnp.array([[[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]]))
    ids = jnp.array([[0, 1, 0]])
    got = grl.mean_target_log_prob(logits, ids, jnp.array([[0, 1, 1]]))
    np.testing.assert_allclose(float(got[0]), (np.log(0.5) + np.log(0.25)) / 2, rtol=1e-6)
    g = jnp.array([[0.0, -1.0]])
    s = jnp.array([[0.2, 0.1]])
    p = np.exp([0.0, -1.0]) / np.exp([0.0, -1.0]).sum()
    qq = np.exp(np.array([0.2, 0.1]) / 0.05)
    qq = qq / qq.sum()
    np.testing.assert_allclose(float(grl.kl_gen_to_dual(g, s, 0.05)), float((p * np.log(p / qq)).sum()), rtol=1e-5)


def test_grl_kl_gradient_flag_controls_gradient_into_the_encoder():
    """The KL term's gradient reaches the encoder with kl_gradient=True and not with False."""
    cfg = registry.get("qwen2-tiny", num_hidden_layers=1)[0]
    model = LlmModel(cfg)
    params = nn.unbox(model.init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"])
    batch = _grl_batch(np.random.default_rng(5), lq=4, ld=4)

    def grad_of(p, kl, gen, part):
        def f(p):
            loss, m = grl.grl_loss(*grl_forward(p, model, batch), batch["gen_ids"], batch["gen_target"],
                                   gen_weight=0.0 if part == "kl" else 1.0, kl_gradient=kl, gen_gradient=gen)
            # "kl": gen weight 0 and the contrastive part subtracted, what is left is the KL term.
            return {"kl": loss - m["contrastive_loss"], "total": loss, "con": m["contrastive_loss"]}[part], m
        (_, m), g = jax.value_and_grad(f, has_aux=True)(p)
        return g, m

    # One compiled program for the four variants (compiling is the slow part on a loaded CPU).
    (g_on, m_on), (g_off, m_off), (g_ref, _), (g_all_off, m_all) = jax.jit(lambda p: (
        grad_of(p, True, True, "kl"), grad_of(p, False, True, "kl"), grad_of(p, False, False, "con"),
        grad_of(p, False, False, "total")))(params)
    norm = lambda g: float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(g)))
    assert norm(g_on) > 1e-6
    assert norm(g_off) == 0.0
    # The KL value is the same either way (the reference still logs the term).
    np.testing.assert_allclose(float(m_on["kl_loss"]), float(m_off["kl_loss"]), rtol=1e-6)
    assert float(m_on["kl_loss"]) > 0 and np.isfinite(float(m_on["gen_loss"]))
    # Both flags off: only the contrastive term trains the model (ULLME's surrogate-only backward).
    for x, y in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_all_off)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(float(m_all["loss"]),
                               float(m_all["contrastive_loss"] + m_all["gen_loss"] + m_all["kl_loss"]), rtol=1e-6)
