"""The per-objective variants of ``experiments/configs/sentence_embedding.py`` end to end:
``simlex_cosine`` (cosine regression), ``softmax`` (SBERT pair classification), ``dse`` (a
bi-encoder student of the ``cross_encoder`` teacher, whose export scores the pairs), ``moe``
(mixture-of-experts embedder with domain routing). Each runs ``<variant>,tiny,runlocal`` through
the training loop (the launcher's ``train_and_evaluate``) on a small sample of its real pair
file, in a tmp workdir, and checks finite train losses, the eval metrics in ``metrics.jsonl`` /
``eval_results.json`` and the sentence-transformers export. Plus the bad-input errors of DSE
(pairs without teacher logits, a missing teacher, a teacher of the wrong width) and of the
derived pair files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from jaxbert.tasks import get_task

from _configs import small_contrastive_run


def _sample(src: str, dst: Path, n: int) -> Path:
    """A seeded sample of ``n`` records of ``src`` (so every label / domain appears)."""
    rows = open(src, encoding="utf-8").read().splitlines()
    dst.write_text("".join(l + "\n" for l in random.Random(0).sample(rows, n)))
    return dst


def _small(c, tmp_path: Path, n_pairs: int = 48):
    """Shrink a ``tiny,runlocal`` config further: a pair sample, 3 steps, small eval sets."""
    c.data.train = str(_sample(c.data.train, tmp_path / "pairs.jsonl", n_pairs))
    return small_contrastive_run(c)


def _check_run(workdir: Path, metrics: dict[str, str]) -> dict:
    """Finite train losses at every step; ``metrics[split]`` of every split in ``metrics.jsonl``
    and ``eval_results.json``."""
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in train), train
    ev = json.loads((workdir / "eval_results.json").read_text())
    for split, metric in metrics.items():
        assert any(r["split"] == split and metric in r for r in rows), split
        assert -1.0 <= ev[split][metric] <= 1.0, (split, ev[split])
    return ev


def _check_st_export(export: Path, dim: int = 128) -> None:
    from jaxbert.inference.sentence_encoder import SentenceEncoder
    assert (export / "modules.json").is_file() and (export / "1_Pooling" / "config.json").is_file()
    emb = SentenceEncoder.from_pretrained(export).encode(["a sharp-pointed tip on a stem", "a thorn"])
    assert emb.shape == (2, dim) and np.all(np.isfinite(emb))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_simlex_cosine_end_to_end(tmp_path, data_dir, minilm_dir):
    from experiments.configs.sentence_embedding import get_config
    from jaxbert.train.loop import train_and_evaluate
    c = _small(get_config("simlex_cosine,tiny,runlocal"), tmp_path)
    assert c.contrastive.objective == "cosine"
    scores = [json.loads(l)["score"] for l in open(c.data.train, encoding="utf-8")]
    assert 0.0 <= min(scores) and max(scores) <= 1.0  # rescaled to the cosine's range
    result = train_and_evaluate(c, tmp_path / "run")
    assert result["status"] == "done" and result["step"] == 3
    ev = _check_run(tmp_path / "run", {"simlex_test": "spearman", "wordsim": "spearman"})
    assert ev["simlex_test"]["num_pairs"] == 150
    _check_st_export(tmp_path / "run" / "export")


def test_softmax_end_to_end(tmp_path, data_dir, minilm_dir):
    from experiments.configs.sentence_embedding import SOFTMAX_LABELS, get_config
    from jaxbert.train.loop import train_and_evaluate
    c = _small(get_config("softmax,tiny,runlocal"), tmp_path)
    c.eval_splits = ("wordnet", "lee")
    labels = {json.loads(l)["label"] for l in open(c.data.train, encoding="utf-8")}
    assert labels == set(SOFTMAX_LABELS)
    result = train_and_evaluate(c, tmp_path / "run")
    assert result["status"] == "done"
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows if r["split"] == "train")  # the classifier's
    ev = _check_run(tmp_path / "run", {"wordnet": "mrr@10", "lee": "spearman"})
    assert 0.0 <= ev["wordnet"]["ndcg@10"] <= 1.0 and -1.0 <= ev["lee"]["spearman"] <= 1.0
    _check_st_export(tmp_path / "run" / "export")


def test_softmax_sense_pairs_are_real_wordnet(data_dir):
    """The ``other_sense`` pair shares a lemma with the definition, and is not the definition."""
    from experiments.configs.sentence_embedding import get_config
    rows = [json.loads(l) for l in open(get_config("softmax,tiny,runlocal").data.train, encoding="utf-8")]
    assert len(rows) == 11226
    by_query: dict[str, dict[str, str]] = {}
    for r in rows:
        by_query.setdefault(r["anchor"], {})[r["label"]] = r["positive"]
    for q, d in list(by_query.items())[:200]:
        if "other_sense" in d:
            lemmas = lambda t: {w.lower() for w in t.split(": ", 1)[0].split(", ")}  # noqa: E731
            assert lemmas(d["definition"]) & lemmas(d["other_sense"]) and d["other_sense"] != d["definition"]
        assert d["unrelated"] != d["definition"]


def test_dse_from_cross_encoder_teacher_end_to_end(tmp_path, data_dir, minilm_dir, monkeypatch):
    """The documented chain: ``cross_encoder`` run -> its export is the teacher -> ``dse`` student."""
    from experiments.configs.sentence_embedding import get_config
    from jaxbert.tasks.contrastive import teacher_scored_pairs
    from jaxbert.train.loop import train_and_evaluate

    t = get_config("cross_encoder,tiny,runlocal")
    t.data.train = str(_sample(t.data.train, tmp_path / "cross_train.jsonl", 32))
    t.data.test = str(_sample(t.data.test, tmp_path / "cross_test.jsonl", 32))
    t.num_train_steps, t.batch_size, t.eval_batch_size = 2, 8, 16
    t.data.max_length, t.data.buckets = 64, (32, 64)
    t.progress, t.tensorboard = False, False
    assert train_and_evaluate(t, tmp_path / "teacher")["status"] == "done"
    teacher = tmp_path / "teacher" / "export"

    c = _small(get_config("dse,tiny,runlocal"), tmp_path, n_pairs=32)
    c.data.teacher_dir = str(teacher)
    c.data.teacher_max_length = 64
    c.eval_splits = ("wordnet",)
    # keep the scored pairs out of the user's cache (the tokenizer as a path: no asset lookup)
    cache = tmp_path / "cache"
    c.data.tokenizer = str(minilm_dir)
    monkeypatch.setattr("jaxbert.assets.cache_dir", lambda: cache)
    task = get_task("contrastive")(c)
    scored = Path(task.train_path)
    assert scored.parent.parent == cache / "derived"
    rows = [json.loads(l) for l in scored.read_text().splitlines()]
    assert len(rows) == 32 and all(len(r["teacher"]) == 2 and np.all(np.isfinite(r["teacher"])) for r in rows)
    batch = next(task.train_iterator(8, 0))
    assert batch["teacher"].shape == (8, 2) and batch["labels"].shape == (8,)
    result = train_and_evaluate(c, tmp_path / "run")
    assert teacher_scored_pairs(c.data.train, teacher, text_field="text", pair_field="pair",
                                max_length=64) == scored  # scored once, then reused
    assert result["status"] == "done"
    _check_run(tmp_path / "run", {"wordnet": "mrr@10"})
    _check_st_export(tmp_path / "run" / "export")


def test_dse_bad_input(tmp_path, data_dir, minilm_dir):
    from experiments.configs.sentence_embedding import get_config
    c = _small(get_config("dse,tiny,runlocal"), tmp_path, n_pairs=16)
    c.eval_splits = ()
    # no teacher model where the config points
    c.data.teacher_dir = str(tmp_path / "no_teacher")
    with pytest.raises(FileNotFoundError, match=r"DSE teacher .*no_teacher.* is not a model directory.*cross_encoder"):
        get_task("contrastive")(c)
    # teacher_dir unset: data.train must already hold teacher logits; the error names file and line
    c.data.teacher_dir = ""
    with pytest.raises(ValueError, match=r"pairs.jsonl line 1 \(record 0\): no teacher field 'teacher'"):
        get_task("contrastive")(c)
    rows = [json.loads(l) for l in open(c.data.train, encoding="utf-8")]
    for r in rows:
        r["teacher"] = [0.1, -0.2]
    rows[3]["teacher"] = "high"
    (tmp_path / "scored.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c.data.train = str(tmp_path / "scored.jsonl")
    with pytest.raises(ValueError, match=r"scored.jsonl line 4 \(record 3\): teacher field 'teacher' must be a number"):
        get_task("contrastive")(c)
    # teacher logits of another width than the student's head (2 labels)
    for r in rows:
        r["teacher"] = [0.1, -0.2, 0.3]
    (tmp_path / "scored.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"scored.jsonl: 3 teacher logits per pair, but the student's pair head has 2"):
        get_task("contrastive")(c)
    # a teacher directory on a non-DSE objective
    s = _small(get_config("softmax,tiny,runlocal"), tmp_path, n_pairs=16)
    s.data.teacher_dir = str(tmp_path)
    with pytest.raises(ValueError, match="data.teacher_dir=.* is for objective 'dse'"):
        get_task("contrastive")(s)


def test_moe_domain_routing_end_to_end(tmp_path, data_dir, minilm_dir):
    from experiments.configs.sentence_embedding import MOE_DOMAINS, get_config
    from jaxbert.train.loop import train_and_evaluate
    c = _small(get_config("moe,tiny,runlocal"), tmp_path, n_pairs=60)
    c.eval_splits = ("wordnet",)
    domains = {json.loads(l)["domain"] for l in open(c.data.train, encoding="utf-8")}
    assert domains == set(MOE_DOMAINS)
    result = train_and_evaluate(c, tmp_path / "run")
    assert result["status"] == "done"
    _check_run(tmp_path / "run", {"wordnet": "mrr@10"})
    for domain in MOE_DOMAINS:  # one dense sentence-transformers model per expert
        _check_st_export(tmp_path / "run" / "export" / domain)
