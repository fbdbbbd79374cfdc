"""Multi-label (thresholds, micro/macro F1) and regression (MSE, Pearson/Spearman): metrics against
hand-computed cases and scikit-learn/scipy, bad input, and engine runs whose predictions survive a
checkpoint round trip (tuned thresholds and target scaling included)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxbert.data.labels import LabelMap
from jaxbert.eval.multilabel import apply_thresholds, multilabel_scores, tune_thresholds
from jaxbert.eval.regression import pearson, rankdata, regression_scores, spearman
from task_roundtrip import quiet, train_and_restore


# ------------------------------------------------------------------------------- multi-label metrics

def test_threshold_tuning_hand_computed():
    # One label, probs sorted 0.9 0.8 0.3 0.2 with gold 1 0 1 0. Predicting the top k positive:
    # k=1: F1 = 2*1/(1+2) = .667; k=2: 2/(2+2) = .5; k=3: 4/(3+2) = .8; k=4: 4/(4+2) = .667.
    # Best k=3: threshold halfway between 0.3 and 0.2.
    probs = np.array([[0.9], [0.8], [0.3], [0.2]])
    gold = np.array([[1], [0], [1], [0]])
    (t,) = tune_thresholds(probs, gold)
    assert abs(t - 0.25) < 1e-12
    assert list(apply_thresholds(probs, [t])[:, 0]) == [1, 1, 1, 0]
    # Per label independently; a label with no positives keeps the default; all-positive works.
    probs = np.array([[0.9, 0.1, 0.6], [0.2, 0.4, 0.0], [0.7, 0.3, 0.5]])
    gold = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1]])
    t = tune_thresholds(probs, gold, default=0.5)
    assert abs(t[0] - 0.45) < 1e-12 and t[1] == 0.5 and t[2] < 0.0
    assert (apply_thresholds(probs, t) == np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1]])).all()
    # Tuned thresholds never do worse than 0.5 on the data they were tuned on (macro F1).
    rng = np.random.default_rng(0)
    gold = (rng.random((200, 5)) < [0.5, 0.2, 0.05, 0.3, 0.1]).astype(int)
    probs = np.clip(gold * 0.3 + rng.random((200, 5)) * 0.7, 0, 1)
    tuned = multilabel_scores(gold, apply_thresholds(probs, tune_thresholds(probs, gold)))["macro_f1"]
    assert tuned >= multilabel_scores(gold, apply_thresholds(probs, 0.5))["macro_f1"]


def test_micro_macro_f1_hand_computed_and_vs_sklearn():
    gold = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    pred = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0], [0, 0, 0]])
    s = multilabel_scores(gold, pred)
    # label 0: tp 2 -> F1 1; label 1: tp 1 fn 1 -> 2/3; label 2: tp 0 fp 1 fn 1 -> 0.
    assert np.allclose(s["per_label_f1"], [1.0, 2 / 3, 0.0])
    assert abs(s["macro_f1"] - (1 + 2 / 3) / 3) < 1e-12
    # micro: TP 3, FP 1, FN 2 -> 6 / (6 + 3)
    assert abs(s["micro_f1"] - 6 / 9) < 1e-12 and s["precision"] == 0.75 and s["recall"] == 0.6
    assert s["subset_accuracy"] == 0.25  # only the empty row is exactly right
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for _ in range(20):
        g, p = (rng.random((30, 6)) < 0.3).astype(int), (rng.random((30, 6)) < 0.3).astype(int)
        s = multilabel_scores(g, p)
        assert np.isclose(s["micro_f1"], sk.f1_score(g, p, average="micro", zero_division=0))
        assert np.isclose(s["macro_f1"], sk.f1_score(g, p, average="macro", zero_division=0))
    with pytest.raises(ValueError, match="only 0/1"):
        multilabel_scores(np.array([[2]]), np.array([[1]]))


# ------------------------------------------------------------------------------- regression metrics

def _pearson_by_formula(x, y):
    xc, yc = x - x.mean(), y - y.mean()
    return (xc * yc).sum() / np.sqrt((xc * xc).sum() * (yc * yc).sum())


def _average_ranks(x):
    """1-based ranks, ties averaged, by counting: rank = #smaller + (#equal + 1) / 2."""
    return np.array([(x < v).sum() + ((x == v).sum() + 1) / 2 for v in x])


def test_pearson_spearman_from_scipy_cross_checked_by_formula():
    """scipy's numbers (what jaxbert.eval.regression returns) equal the textbook formulas."""
    assert list(rankdata([10, 20, 20, 5])) == [2.0, 3.5, 3.5, 1.0]
    assert abs(pearson([1, 2, 3], [2, 4, 7]) - 0.9933992677987828) < 1e-12  # by hand: cov / (sx sy)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == 1.0
    rng = np.random.default_rng(0)
    for _ in range(10):
        x = rng.integers(0, 6, 50).astype(float)  # ties
        y = x + rng.normal(0, 2, 50)
        assert np.isclose(pearson(x, y), _pearson_by_formula(x, y), rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(rankdata(x), _average_ranks(x))
        assert np.isclose(spearman(x, y), _pearson_by_formula(_average_ranks(x), _average_ranks(y)),
                          rtol=1e-12, atol=1e-12)
    s = regression_scores([1.0, 2.0, 4.0], [1.0, 3.0, 3.0])
    assert np.isclose(s["mse"], 2 / 3) and np.isclose(s["rmse"], np.sqrt(2 / 3))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # undefined is nan, without scipy's ConstantInputWarning
        assert np.isnan(pearson([1, 1, 1], [1, 2, 3])) and np.isnan(spearman([1, 2, 3], [4, 4, 4]))
        assert np.isnan(pearson([1.0], [2.0]))


# ------------------------------------------------------------------------------- bad input

def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_label_outside_label_set_and_bad_targets_name_the_line(tmp_path):
    from jaxbert.data.sources import JsonlSource
    from jaxbert.tasks.multilabel import multi_hot
    from jaxbert.tasks.regression import read_targets
    lm = LabelMap("labels", ["noun", "verb"])
    src = JsonlSource(_jsonl(tmp_path / "ml.jsonl", [{"text": "a", "labels": ["noun"]}, {"text": "b", "labels": ["noun", "adverb"]}]))
    with pytest.raises(ValueError, match=r"ml\.jsonl line 2 .*label 'adverb'.*not one of the 2 valid labels \['noun', 'verb'\]"):
        multi_hot(src, lm)
    src = JsonlSource(_jsonl(tmp_path / "ml2.jsonl", [{"text": "a", "labels": "noun"}]))
    with pytest.raises(TypeError, match=r"ml2\.jsonl line 1 .*must be a list of labels"):
        multi_hot(src, lm)
    assert multi_hot(JsonlSource(_jsonl(tmp_path / "ok.jsonl", [{"labels": ["verb", "noun"]}, {"labels": []}])), lm).tolist() == [[1, 1], [0, 0]]
    src = JsonlSource(_jsonl(tmp_path / "reg.jsonl", [{"score": 1.5}, {"score": "high"}]))
    with pytest.raises(ValueError, match=r"reg\.jsonl line 2 .*must be a finite number, got 'high'"):
        read_targets(src, "score")


# ------------------------------------------------------------------------------- engine + checkpoint

@pytest.fixture(scope="module")
def small_sets(tmp_path_factory):
    """Tiny multi-label and regression sets in the layout of the derived datasets."""
    root = tmp_path_factory.mktemp("mlreg")
    rng = np.random.default_rng(0)
    words = ["run", "fast", "light", "table", "quickly", "green", "walk", "well", "paper", "bright", "slowly", "stone"]
    tags = {"run": ["noun", "verb"], "fast": ["adjective", "adverb", "noun", "verb"], "light": ["adjective", "noun", "verb"],
            "table": ["noun", "verb"], "quickly": ["adverb"], "green": ["adjective", "noun", "verb"], "walk": ["noun", "verb"],
            "well": ["adjective", "adverb", "noun", "verb"], "paper": ["noun", "verb"], "bright": ["adjective", "adverb"],
            "slowly": ["adverb"], "stone": ["adjective", "noun", "verb"]}
    ml = [{"text": w, "labels": tags[w]} for w in words]
    reg = [{"word1": a, "word2": b, "score": float(rng.uniform(0, 10))} for a, b in zip(words, words[1:] + words[:1])]
    out = {}
    for name, rows in (("ml", ml), ("reg", reg)):
        out[name] = (_jsonl(root / f"{name}_train.jsonl", rows), _jsonl(root / f"{name}_val.jsonl", rows[:6]),
                     _jsonl(root / f"{name}_test.jsonl", rows[6:]))
    return out


def _config(module: str, arg: str, paths):
    """The recipe's config (its get_config builds the derived dataset from the data pack once,
    hence ``data_dir`` in the tests) with the tiny files swapped in."""
    import importlib
    c = quiet(importlib.import_module(f"experiments.configs.{module}").get_config(arg))
    c.data.train, c.data.validation, c.data.test = (str(p) for p in paths)
    c.data.train_subset = None
    c.num_train_steps = 3
    c.batch_size = 4
    c.eval_batch_size = 4
    return c


def test_multilabel_task_thresholds_and_predictions_survive_checkpoint(tmp_path, small_sets, minilm_dir, data_dir):
    c = _config("finetune_multilabel", "wordnet_pos,runlocal,tiny", small_sets["ml"])
    (task, params), (task2, params2), result = train_and_restore(c, tmp_path / "run")
    assert task.thresholds_tuned and task2.thresholds_tuned
    assert np.array_equal(task.thresholds, task2.thresholds)  # tuned on validation, restored from the checkpoint
    test = result["eval"]["test"]
    assert {"micro_f1", "macro_f1", "micro_f1@0.5", "f1/noun", "subset_accuracy"} <= set(test)
    texts = ["run", "quickly", "stone", "unseen"]
    assert task.predict(params, texts) == task2.predict(params2, texts)
    probs = task.predict_features(params, task.eval_features["test"])["probs"]
    probs2 = task2.predict_features(params2, task2.eval_features["test"])["probs"]
    assert np.array_equal(probs, probs2)
    gold = np.stack([f["targets"] for f in task.eval_features["test"]])
    assert np.isclose(multilabel_scores(gold, apply_thresholds(probs, task.thresholds))["micro_f1"], test["micro_f1"])


def test_regression_task_predictions_survive_checkpoint_and_export(tmp_path, small_sets, minilm_dir, data_dir):
    from jaxbert.convert import hf as hf_convert
    c = _config("finetune_regression", "simlex999,runlocal,tiny", small_sets["reg"])
    (task, params), (task2, params2), result = train_and_restore(c, tmp_path / "run")
    assert (task.mean, task.std) == (task2.mean, task2.std)
    rows = [json.loads(l) for l in small_sets["reg"][2].read_text().splitlines()]
    a, b = [r["word1"] for r in rows], [r["word2"] for r in rows]
    before, after = task.predict(params, a, b), task2.predict(params2, a, b)
    assert np.array_equal(before, after)
    m = result["eval"]["test"]
    assert np.isclose(m["mse"], np.mean((before - np.array([r["score"] for r in rows])) ** 2), rtol=1e-5)
    # The HF export predicts raw scores: mean/std folded into the head.
    out = task.export(params, tmp_path / "export")
    pre = hf_convert.load_pretrained(out, task="sequence_classification")
    batch = task.tokenizer(a, b, padding=True, return_tensors="np")
    logits = pre.model.apply({"params": pre.params}, batch["input_ids"], batch["attention_mask"],
                             batch["token_type_ids"])["logits"][:, 0]
    assert np.allclose(logits, before, atol=1e-4)
    assert json.loads((out / "config.json").read_text())["problem_type"] == "regression"
