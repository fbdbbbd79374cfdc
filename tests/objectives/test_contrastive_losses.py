"""Sentence-embedding losses against sentence-transformers' torch losses on the same embeddings.

``jaxbert.objectives.contrastive`` vs ``sentence_transformers`` (``MultipleNegativesRankingLoss``
in every direction / partition mode, with hard negatives; ``CoSENTLoss``; ``CosineSimilarityLoss``;
``SoftmaxLoss``'s feature concatenation), values and gradients w.r.t. the embeddings; NT-Xent and
DSE against direct numpy formulas; Matryoshka = the weighted sum of per-dimension losses.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxbert.objectives import contrastive as C

ATOL = 2e-5


def _emb(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _st_mnrl(**kw):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    return MultipleNegativesRankingLoss(model=None, **kw)


@pytest.mark.parametrize("directions,partition", [
    (("query_to_doc",), "joint"),
    (("query_to_doc", "doc_to_query"), "per_direction"),
    (("query_to_doc", "doc_to_query"), "joint"),
    (("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"), "joint"),
])
@pytest.mark.parametrize("num_neg", [0, 2])
def test_mnrl_matches_sentence_transformers(directions, partition, num_neg):
    b, d = 6, 16
    q, docs = _emb(0, b, d), _emb(1, b, 1 + num_neg, d)
    # Make the positives related to the queries so the loss is not trivially log(B).
    docs[:, 0] += 0.8 * q
    ref = _st_mnrl(scale=20.0, directions=directions, partition_mode=partition)
    tq = torch.tensor(q, requires_grad=True)
    tdocs = [torch.tensor(docs[:, k], requires_grad=True) for k in range(1 + num_neg)]
    tl_t = ref.compute_loss_from_embeddings([tq, *tdocs], None)
    tl_t.backward()
    tl = tl_t.item()
    loss, sums = C.mnrl_loss(jnp.asarray(q), jnp.asarray(docs), directions=directions, partition_mode=partition)
    assert abs(float(loss) - float(tl)) < ATOL, (float(loss), float(tl))
    assert abs(float(sums["loss"] / sums["weight"]) - float(loss)) < 1e-6
    gq, gd = jax.grad(lambda a, bb: C.mnrl_loss(a, bb, directions=directions, partition_mode=partition)[0],
                      argnums=(0, 1))(jnp.asarray(q), jnp.asarray(docs))
    np.testing.assert_allclose(np.asarray(gq), tq.grad.numpy(), atol=ATOL)
    np.testing.assert_allclose(np.asarray(gd), np.stack([t.grad.numpy() for t in tdocs], 1), atol=ATOL)


@pytest.mark.parametrize("mode", ["in_batch_negatives", "hard_negatives", "all_negatives"])
def test_mnrl_hardness_weighting_matches_sentence_transformers(mode):
    q, docs = _emb(20, 5, 8), _emb(21, 5, 3, 8)
    ref = _st_mnrl(hardness_mode=mode, hardness_strength=5.0)
    tl = ref.compute_loss_from_embeddings([torch.tensor(q)] + [torch.tensor(docs[:, k]) for k in range(3)], None).item()
    loss, _ = C.mnrl_loss(jnp.asarray(q), jnp.asarray(docs), hardness_mode=mode, hardness_strength=5.0)
    assert abs(float(loss) - tl) < ATOL
    with pytest.raises(ValueError, match="hardness_mode must be one of"):
        C.mnrl_loss(jnp.asarray(q), jnp.asarray(docs), hardness_mode="hardest")


def test_mnrl_scale_and_2d_docs():
    q, p = _emb(2, 5, 8), _emb(3, 5, 8)
    ref = _st_mnrl(scale=7.0)
    tl = float(ref.compute_loss_from_embeddings([torch.tensor(q), torch.tensor(p)], None))
    assert abs(float(C.mnrl_loss(q, p, scale=7.0)[0]) - tl) < ATOL


def test_mnrl_bad_options():
    q = jnp.zeros((2, 4))
    with pytest.raises(ValueError, match="scale must be positive"):
        C.mnrl_loss(q, q, scale=0.0)
    with pytest.raises(ValueError, match="must include 'query_to_doc'"):
        C.mnrl_loss(q, q, directions=("doc_to_query",))
    with pytest.raises(ValueError, match="invalid MNRL directions"):
        C.mnrl_loss(q, q, directions=("sideways",))
    with pytest.raises(ValueError, match="per_direction"):
        C.mnrl_loss(q, q, directions=("query_to_doc", "doc_to_doc"), partition_mode="per_direction")
    with pytest.raises(ValueError, match=r"queries \[B, d\] and docs \[B, K, d\]"):
        C.mnrl_loss(q, jnp.zeros((3, 4)))


@pytest.mark.parametrize("scale", [20.0, 5.0])
def test_cosent_matches_sentence_transformers(scale):
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss
    u, v = _emb(4, 9, 12), _emb(5, 9, 12)
    scores = np.array([0.1, 0.5, 0.5, 0.9, 0.0, 0.3, 1.0, 0.7, 0.5], np.float32)  # with ties
    tu, tv = torch.tensor(u, requires_grad=True), torch.tensor(v, requires_grad=True)
    tl_t = CoSENTLoss(model=None, scale=scale).compute_loss_from_embeddings([tu, tv], torch.tensor(scores))
    tl_t.backward()
    tl = tl_t.item()
    loss, sums = C.cosent_loss(jnp.asarray(u), jnp.asarray(v), jnp.asarray(scores), scale=scale)
    assert abs(float(loss) - float(tl)) < ATOL
    assert abs(float(sums["loss"] / sums["weight"]) - float(loss)) < 1e-5
    gu = jax.grad(lambda a: C.cosent_loss(a, jnp.asarray(v), jnp.asarray(scores), scale=scale)[0])(jnp.asarray(u))
    np.testing.assert_allclose(np.asarray(gu), tu.grad.numpy(), atol=ATOL)


def test_cosine_similarity_loss_matches_sentence_transformers():
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss
    u, v = _emb(6, 7, 10), _emb(7, 7, 10)
    scores = np.linspace(0, 1, 7).astype(np.float32)
    tl = CosineSimilarityLoss(model=None).compute_loss_from_embeddings([torch.tensor(u), torch.tensor(v)],
                                                                      torch.tensor(scores))
    assert abs(float(C.cosine_similarity_loss(u, v, scores)[0]) - float(tl)) < ATOL


def test_softmax_loss_features_match_sentence_transformers():
    """SBERT SoftmaxLoss: classifier over [u, v, |u - v|] (+ u * v); same logits and CE."""
    from sentence_transformers.sentence_transformer.losses import SoftmaxLoss

    class _Stub:  # SoftmaxLoss only reads model.device
        device = torch.device("cpu")

    u, v = _emb(8, 4, 6), _emb(9, 4, 6)
    labels = np.array([0, 2, 1, 2])
    for mul in (False, True):
        ref = SoftmaxLoss(_Stub(), embedding_dimension=6, num_labels=3, concatenation_sent_multiplication=mul)
        feats = ("u", "v", "abs_diff") + (("mul",) if mul else ())
        tu, tv = torch.tensor(u), torch.tensor(v)
        parts = [tu, tv, torch.abs(tu - tv)] + ([tu * tv] if mul else [])
        tlogits = ref.classifier(torch.cat(parts, 1))
        tl = ref.loss_fct(tlogits, torch.tensor(labels)).item()
        w = ref.classifier.weight.detach().numpy().T
        bias = ref.classifier.bias.detach().numpy()
        logits = C.pair_features(jnp.asarray(u), jnp.asarray(v), feats) @ w + bias
        np.testing.assert_allclose(np.asarray(logits), tlogits.detach().numpy(), atol=1e-5)
        loss, sums = C.softmax_pair_loss(logits, jnp.asarray(labels))
        assert abs(float(loss) - tl) < ATOL
        assert float(sums["accuracy"]) == float((np.argmax(np.asarray(logits), -1) == labels).sum())
    with pytest.raises(ValueError, match="pair features"):
        C.pair_features(jnp.asarray(u), jnp.asarray(v), ("u", "diff"))


def _ntxent_reference(z1, z2, tau):
    """pytorch-metric-learning NTXentLoss with labels [0..B-1, 0..B-1], written out (mean over positive pairs)."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n, b = len(z), len(z1)
    labels = np.concatenate([np.arange(b), np.arange(b)])
    sim = z @ z.T / tau
    losses = []
    for a in range(n):
        for p in range(n):
            if a != p and labels[a] == labels[p]:
                negs = [sim[a, k] for k in range(n) if labels[k] != labels[a]]
                denom = math.exp(sim[a, p]) + sum(math.exp(x) for x in negs)
                losses.append(-(sim[a, p] - math.log(denom)))
    return float(np.mean(losses))


def test_ntxent_matches_reference():
    z1, z2 = _emb(10, 5, 8), _emb(11, 5, 8)
    z2 = z2 + 2 * z1
    loss, sums = C.ntxent_loss(jnp.asarray(z1), jnp.asarray(z2), scale=1 / 0.04)
    assert abs(float(loss) - _ntxent_reference(z1, z2, 0.04)) < 1e-4
    assert float(sums["weight"]) == 5.0
    with pytest.raises(ValueError, match="two \\[B, d\\] views"):
        C.ntxent_loss(jnp.zeros((2, 3)), jnp.zeros((3, 3)))


def test_dse_loss_formula():
    s, t = _emb(12, 4, 3), _emb(13, 4, 3)
    labels = np.array([0, 1, 2, 1])
    mse = np.mean(np.sum((s - t) ** 2, 1))
    assert abs(float(C.dse_loss(s, t, alpha=1.0)[0]) - mse) < 1e-5
    logp = s - np.log(np.exp(s).sum(1, keepdims=True))
    ce = -np.mean(logp[np.arange(4), labels])
    got = float(C.dse_loss(s, t, jnp.asarray(labels), alpha=0.3)[0])
    assert abs(got - (0.7 * ce + 0.3 * mse)) < 1e-5
    with pytest.raises(ValueError, match="needs labels"):
        C.dse_loss(s, t, alpha=0.5)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        C.dse_loss(s, t, alpha=1.5)


def test_matryoshka_is_weighted_sum_of_truncated_losses():
    q, docs = _emb(14, 6, 32), _emb(15, 6, 2, 32)
    dims, weights = (32, 16, 8), (1.0, 0.5, 2.0)
    fn = lambda a, b: C.mnrl_loss(a, b)  # noqa: E731
    loss, sums = C.matryoshka_loss(fn, (jnp.asarray(q), jnp.asarray(docs)), dims, weights)
    expected = 0.0
    for d, w in zip(dims, weights):
        # sentence-transformers' shrink: truncate then L2-normalise, fed to its MNRL
        tq = torch.nn.functional.normalize(torch.tensor(q[:, :d]), dim=-1)
        td = [torch.nn.functional.normalize(torch.tensor(docs[:, k, :d]), dim=-1) for k in range(2)]
        expected += w * float(_st_mnrl().compute_loss_from_embeddings([tq, *td], None))
    assert abs(float(loss) - expected) < 1e-4
    assert abs(float(sums["loss"] / sums["weight"]) - float(loss)) < 1e-5
    with pytest.raises(ValueError, match="Matryoshka dimension 64"):
        C.matryoshka_loss(fn, (jnp.asarray(q), jnp.asarray(docs)), (64,))
    with pytest.raises(ValueError, match="2 matryoshka weights for 3 dims"):
        C.matryoshka_loss(fn, (jnp.asarray(q), jnp.asarray(docs)), dims, (1.0, 1.0))
