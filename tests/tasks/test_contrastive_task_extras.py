"""GradCache inside the contrastive task gives the plain task gradient; DSE (teacher logits from a
cross-encoder, student loss = (1 - alpha) CE + alpha MSE); the cross-encoder reranker config and
two-stage search (bi-encoder top-k reranked by the cross-encoder)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jaxbert.tasks import get_task
from test_contrastive_task import _config


def test_task_gradcache_gradient_equals_plain(tmp_path, data_dir, minilm_dir):
    c = _config(tmp_path, data_dir)
    plain = get_task("contrastive")(c)
    c.contrastive.grad_cache_chunk = 2
    cached = get_task("contrastive")(c)
    params = jax.jit(plain.model.init)(jax.random.key(0), **plain.sample_input)["params"]
    import flax.linen as nn
    params = nn.unbox(params)
    batch = next(plain.train_iterator(8, 0))
    grad = lambda task: jax.jit(jax.grad(lambda p: task.loss_fn(p, batch, jax.random.key(1), True)[0]))(params)  # noqa: E731
    g1, g2 = grad(plain), grad(cached)
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)))
    scale = max(1.0, max(float(np.abs(np.asarray(a)).max()) for a in jax.tree.leaves(g1)))
    assert diff <= 1e-5 * scale  # float32 summation order only (see test_contrastive_gradcache.py)


def test_dse_teacher_logits_and_student_loss(tmp_path, data_dir, minilm_dir):
    """DSE: a cross-encoder teacher scores the pairs (write_teacher_logits), the bi-encoder student
    (pair head over [u, v, |u - v|]) regresses them: (1 - alpha) CE + alpha MSE."""
    import flax.linen as nn

    from jaxbert.convert.hf import copy_tokenizer_files, save_pretrained
    from jaxbert.models import build_task_model, registry
    from jaxbert.tasks.contrastive import write_teacher_logits

    cfg, backbone = registry.get("bert-tiny")
    teacher = build_task_model(cfg, backbone, "sequence_classification", 2)
    tparams = nn.unbox(jax.jit(teacher.init)(jax.random.key(5), np.zeros((1, 8), np.int32))["params"])
    teacher_dir = save_pretrained(tmp_path / "teacher", tparams, teacher.config, task="sequence_classification")
    copy_tokenizer_files(minilm_dir, teacher_dir)
    c = _config(tmp_path, data_dir, n_pairs=16)
    out = write_teacher_logits(c.data.train, teacher_dir, tmp_path / "dse.jsonl", batch_size=8)
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == 16 and all(len(r["teacher"]) == 2 for r in rows)
    for i, r in enumerate(rows):
        r["label"] = ["no", "yes"][i % 2]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c.data.train = str(out)
    c.data.negative_field = None
    c.data.teacher_field = "teacher"
    c.contrastive.objective = "dse"
    c.contrastive.labels = ("no", "yes")
    c.contrastive.dse_alpha = 0.5
    task = get_task("contrastive")(c)
    params = nn.unbox(jax.jit(task.model.init)(jax.random.key(0), **task.sample_input)["params"])
    batch = next(task.train_iterator(8, 0))
    assert batch["teacher"].shape == (8, 2) and batch["labels"].shape == (8,)
    loss, _ = jax.jit(lambda p: task.loss_fn(p, batch, None, True))(params)
    emb = task.embed_batch(params, batch, None, True)
    logits = np.asarray(task._pair_logits(params, emb[:, 0], emb[:, 1]))
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -logp[np.arange(8), batch["labels"]].mean()
    mse = np.sum((logits - batch["teacher"]) ** 2, 1).mean()
    assert abs(float(loss) - (0.5 * ce + 0.5 * mse)) < 1e-4


def test_cross_encoder_config_and_two_stage_rerank(minilm_dir, data_dir):
    """The reranker config is a classification task on (query, definition, relevant?) pairs; its
    model scores the first stage's candidates through cross_encoder_scorer + rerank."""
    import flax.linen as nn

    from experiments.configs.sentence_embedding import get_config
    from jaxbert.eval.retrieval import cross_encoder_scorer, exact_search, rerank

    c = get_config("cross_encoder,tiny,runlocal")
    assert c.task == "classification"
    rows = [json.loads(l) for l in open(c.data.train, encoding="utf-8").read().splitlines()[:4]]
    assert [r["label"] for r in rows] == [1, 0, 1, 0] and rows[0]["text"] == rows[1]["text"]
    task = get_task("classification")(c)
    params = nn.unbox(jax.jit(task.model.init)(jax.random.key(0), **task.sample_input)["params"])
    queries = ["a thorn on a rose", "a quick run"]
    docs = ["thorn: a sharp tip", "run: move fast", "tree: a woody plant", "rose: a flower"]
    score = cross_encoder_scorer(task.model, params, task.tokenizer, queries, docs, max_length=32, batch_size=4)
    rng = np.random.default_rng(0)
    first, _ = exact_search(rng.standard_normal((2, 8)), rng.standard_normal((4, 8)), k=3)
    reranked = rerank(first, score)
    direct = score(np.repeat([0, 1], 3), first.reshape(-1)).reshape(2, 3)
    expected = np.take_along_axis(first, np.argsort(-direct, axis=1, kind="stable"), axis=1)
    np.testing.assert_array_equal(reranked, expected)
    assert sorted(reranked[0].tolist()) == sorted(first[0].tolist())
