"""The contrastive task's other objectives (CoSENT, SBERT softmax, Mirror-BERT NT-Xent, MNRL with
hard negatives) build their batches and give a finite loss on a tiny random BERT."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jaxbert.tasks import get_task
from test_contrastive_task import _config


@pytest.mark.parametrize("objective", ["cosent", "softmax", "ntxent_mirror", "mnrl_negatives"])
def test_other_objectives_give_finite_loss(tmp_path, data_dir, minilm_dir, objective):
    rng = np.random.default_rng(0)
    words = ["cat", "dog", "car", "tree", "river", "house", "music", "bread"]
    rows = []
    for i in range(16):
        a, b = rng.choice(words, 2, replace=False)
        rows.append({"anchor": f"a {a} near the {b}", "positive": f"the {b} and a {a} together",
                     "negative": [f"nothing about {words[i % 8]}"], "score": float(rng.random()),
                     "label": ["entail", "neutral", "contradict"][i % 3], "text": f"sentence number {i} is long enough"})
    c = _config(tmp_path, data_dir)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c.data.train = str(tmp_path / "pairs.jsonl")
    c.data.negative_field = None if objective != "mnrl_negatives" else "negative"
    if objective in ("cosent", "cosine"):
        c.contrastive.objective = objective
        c.data.score_field = "score"
    elif objective == "softmax":
        c.contrastive.objective = "softmax"
        c.contrastive.labels = ("entail", "neutral", "contradict")
    elif objective == "ntxent_mirror":
        c.contrastive.objective = "ntxent"
        c.contrastive.mirror_span = 5
        c.contrastive.scale = 25.0
        c.data.anchor_field = "text"
        c.data.positive_field = None
    task = get_task("contrastive")(c)
    import flax.linen as nn
    params = nn.unbox(jax.jit(task.model.init)(jax.random.key(0), **task.sample_input)["params"])
    if objective == "softmax":
        assert params["pair_classifier"]["kernel"].shape == (3 * 128, 3)
    batch = next(task.train_iterator(8, 0))
    assert batch["input_ids"].shape[1] == (3 if objective == "mnrl_negatives" else 2)
    loss, sums = jax.jit(lambda p: task.loss_fn(p, batch, jax.random.key(0), False))(params)
    assert np.isfinite(float(loss)) and float(sums["weight"]) == 8.0
