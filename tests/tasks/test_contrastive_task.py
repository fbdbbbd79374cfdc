"""The contrastive task in the training loop: a tiny random BERT trains on real wordnet_defs pairs
with MNRL + GradCache + Matryoshka, evaluates retrieval, Lee similarity and a linear probe into
``metrics.jsonl`` / ``eval_results.json``, and exports a sentence-transformers directory; every
config variant builds; bad configs fail with clear messages."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jaxbert.tasks import get_task

from _configs import small_contrastive_run


def _config(tmp_path, data_dir, args="wordnet,tiny,runlocal", n_pairs=64):
    from experiments.configs.sentence_embedding import get_config, pair_file
    rows = [json.loads(l) for l in open(pair_file("wordnet"), encoding="utf-8").read().splitlines()[:n_pairs]]
    train = tmp_path / "pairs.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = get_config(args)
    c.data.train = str(train)
    c.eval_splits = ("wordnet", "lee")
    c.model.overrides.hidden_dropout_prob = 0.0
    c.model.overrides.attention_probs_dropout_prob = 0.0
    return small_contrastive_run(c)


def test_trainer_mnrl_gradcache_matryoshka_end_to_end(tmp_path, data_dir, minilm_dir):
    from jaxbert.train.loop import train_and_evaluate
    c = _config(tmp_path, data_dir, "wordnet,tiny,runlocal,gradcache,matryoshka")
    c.batch_size = 8
    c.contrastive.grad_cache_chunk = 4
    c.eval_splits = ("wordnet", "lee", "trec_probe")
    c.evals.trec_probe.train_limit, c.evals.trec_probe.test_limit = 120, 60
    result = train_and_evaluate(c, tmp_path / "run")
    assert result["status"] == "done" and result["step"] == 3
    ev = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert 0.0 <= ev["wordnet"]["ndcg@10"] <= 1.0 and ev["wordnet"]["num_queries"] == 20
    assert -1.0 <= ev["lee"]["spearman"] <= 1.0 and ev["lee"]["num_pairs"] == 1225
    assert 0.0 <= ev["trec_probe"]["accuracy"] <= 1.0 and ev["trec_probe"]["num_texts"] == 180
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert len(train_rows) == 3 and all(np.isfinite(r["loss"]) for r in train_rows)
    assert any(r["split"] == "wordnet" and "mrr@10" in r for r in rows)
    # the export is a sentence-transformers directory that jaxbert (and sentence-transformers) load
    from jaxbert.inference.sentence_encoder import SentenceEncoder
    export = tmp_path / "run" / "export"
    assert (export / "modules.json").is_file() and (export / "1_Pooling" / "config.json").is_file()
    emb = SentenceEncoder.from_pretrained(export).encode(["a sharp-pointed tip on a stem", "a thorn"])
    assert emb.shape == (2, 128)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_bad_configs(tmp_path, data_dir, minilm_dir):
    c = _config(tmp_path, data_dir)
    c.contrastive.objective = "triplet_margin"
    with pytest.raises(ValueError, match="contrastive.objective='triplet_margin'; expected one of"):
        get_task("contrastive")(c)
    c = _config(tmp_path, data_dir)
    c.contrastive.objective = "softmax"
    c.contrastive.labels = ("a", "b")
    c.contrastive.matryoshka_dims = (64,)
    with pytest.raises(ValueError, match="Matryoshka truncation cannot feed the 'softmax' classifier"):
        get_task("contrastive")(c)
    c = _config(tmp_path, data_dir)
    c.eval_splits = ("wordnet", "nope")
    with pytest.raises(ValueError, match="eval split 'nope' has no section evals.nope"):
        get_task("contrastive")(c)
    c = _config(tmp_path, data_dir)
    c.contrastive.objective = "cosent"  # records have no score field
    c.data.score_field = "score"
    with pytest.raises(ValueError, match=r"pairs.jsonl line 1 \(record 0\): no score field 'score'"):
        get_task("contrastive")(c)


@pytest.mark.parametrize("arg", ["wordnet", "wordnet,gradcache,matryoshka,symmetric", "dialog", "chatterbot", "mirror",
                                 "mirror_words", "simlex", "cross_encoder", "simlex_cosine", "softmax", "dse", "moe"])
def test_every_config_builds(arg, data_dir):
    from pathlib import Path

    from experiments.configs.sentence_embedding import get_config
    c = get_config(arg + ",tiny,runlocal")
    assert Path(c.data.train).is_file()
    assert c.checkpoint.best_metric.split("/")[0] in c.eval_splits
    if "matryoshka" in arg:
        assert tuple(c.contrastive.matryoshka_dims) == (128, 64, 32)  # tiny: hidden 128
    with pytest.raises(ValueError, match="unknown config flags"):
        get_config(arg + ",fast")
