"""Token classification: word-piece label alignment, chunking, span decoding/metrics, bad input,
and a tagger trained by the engine whose predictions survive a checkpoint round trip."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from conftest import read_jsonl
from jaxbert.data.labels import LabelMap
from jaxbert.data.features.tokens import IGNORE, build_token_features
from jaxbert.eval import seqeval
from task_roundtrip import quiet, train_and_restore

NER = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


@pytest.fixture(scope="module")
def tok(minilm_dir):
    from jaxbert.data.tokenization import load_tokenizer
    return load_tokenizer(minilm_dir)


def _pieces(tok, word):
    return tok.convert_ids_to_tokens(tok(word, add_special_tokens=False)["input_ids"])


# ------------------------------------------------------------------------------- alignment

def test_alignment_of_words_split_into_several_pieces(tok):
    words = ["Kučera", "visited", "Zürichbergstrasse", "unbelievably", "early"]
    tags = ["B-PER", "O", "B-LOC", "O", "O"]
    assert len(_pieces(tok, "Zürichbergstrasse")) > 2 and len(_pieces(tok, "unbelievably")) > 1
    lm = LabelMap("tags", list(NER))
    records = [{"tokens": words, "tags": tags}]
    ids = [lm.encode(t) for t in tags]
    for alignment in ("first", "all"):
        tf = build_token_features(records, tok, max_length=64, label_map=lm, alignment=alignment)
        (feat,) = tf.features
        pos = tf.word_positions[0]
        n_pieces = [len(_pieces(tok, w)) for w in words]
        assert list(np.diff(pos)) == n_pieces[:-1] and pos[0] == 1  # after [CLS]
        assert feat["input_ids"][0] == tok.cls_token_id and feat["input_ids"][-1] == tok.sep_token_id
        labels = feat["labels"]
        assert labels[0] == labels[-1] == IGNORE
        for w, (p, n) in enumerate(zip(pos, n_pieces)):
            assert labels[p] == ids[w]  # first piece: the word's label
            rest = labels[p + 1:p + n]
            if alignment == "first":
                assert (rest == IGNORE).all()
            else:  # continuation pieces of a B-X word get I-X
                want = lm.encode("I-" + tags[w][2:]) if tags[w].startswith("B-") else ids[w]
                assert (rest == want).all()
        # Predictions read back per word from the first piece.
        (pred,) = tf.word_predictions(labels[None, :], np.array([0]))
        assert list(pred) == ids


def test_long_sentences_are_chunked_between_words_and_reassembled(tok):
    lm = LabelMap("tags", ["A", "B"])
    words = [f"word{i}" for i in range(40)] + ["x"]
    tags = [["A", "B"][i % 2] for i in range(41)]
    records = [{"tokens": ["short", "one"], "tags": ["A", "B"]}, {"tokens": words, "tags": tags}, {"tokens": [], "tags": []}]
    tf = build_token_features(records, tok, max_length=16, label_map=lm)
    assert len(tf) > 3 and max(len(f["input_ids"]) for f in tf.features) <= 16
    assert list(tf.num_words) == [2, 41, 0]
    # Every word is in exactly one chunk, chunks in order.
    covered = [(int(tf.sentence[f]), int(tf.word_start[f]) + i) for f in range(len(tf)) for i in range(len(tf.word_positions[f]))]
    assert covered == [(0, 0), (0, 1)] + [(1, w) for w in range(41)]
    # Shuffled feature order (as in eval batches) still reassembles per sentence.
    order = np.random.default_rng(0).permutation(len(tf))
    preds = np.zeros((len(tf), 16), np.int64)
    for row, f in enumerate(order):
        lab = tf.features[f]["labels"]
        preds[row, :len(lab)] = lab
    out = tf.word_predictions(preds, order)
    assert [list(o) for o in out] == [[0, 1], [lm.encode(t) for t in tags], []]


def test_word_without_pieces_gets_unk(tok):
    tf = build_token_features([{"tokens": ["a", "\u200b", "b"], "tags": ["A", "A", "A"]}], tok, max_length=16,
                              label_map=LabelMap("tags", ["A"]))
    pos = tf.word_positions[0]
    assert len(pos) == 3 and tf.features[0]["input_ids"][pos[1]] == tok.unk_token_id


# ------------------------------------------------------------------------------- span decoding

def test_bio_decoding_of_malformed_sequences():
    # I- without B- opens an entity in seqeval's default mode, and is dropped in strict mode.
    assert seqeval.spans(["O", "I-PER", "I-PER", "O"]) == [("PER", 1, 3)]
    assert seqeval.spans(["O", "I-PER", "I-PER", "O"], strict=True) == []
    # A type change inside a chunk splits it; B- after I- starts a new entity.
    assert seqeval.spans(["B-PER", "I-LOC", "I-LOC", "B-LOC", "I-LOC"]) == [("PER", 0, 1), ("LOC", 1, 3), ("LOC", 3, 5)]
    assert seqeval.spans(["B-PER", "I-LOC", "I-LOC", "B-LOC", "I-LOC"], strict=True) == [("PER", 0, 1), ("LOC", 3, 5)]
    # Entity at the end of the sentence; I- right at the start.
    assert seqeval.spans(["I-LOC"]) == [("LOC", 0, 1)]
    assert seqeval.spans(["O", "B-PER"]) == [("PER", 1, 2)]
    # BIOES: S- is one token; B- without E- is only an entity in the default mode.
    seq = ["S-PER", "B-LOC", "I-LOC", "E-LOC", "B-PER", "I-PER", "O", "E-LOC"]
    assert seqeval.spans(seq) == [("PER", 0, 1), ("LOC", 1, 4), ("PER", 4, 6), ("LOC", 7, 8)]
    assert seqeval.spans(seq, strict=True, scheme="bioes") == [("PER", 0, 1), ("LOC", 1, 4)]
    with pytest.raises(ValueError, match="not a BIO/BIOES label"):
        seqeval.spans(["B-PER", "NOUN"])


def test_span_scores_hand_computed():
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    s = seqeval.span_scores(gold, pred)  # 1 of 2 predicted spans right, 1 of 2 gold found
    assert (s["precision"], s["recall"], s["f1"]) == (0.5, 0.5, 0.5)
    assert s["f1/PER"] == 1.0 and s["f1/MISC"] == 0.0
    assert seqeval.token_accuracy(gold, pred) == 8 / 10
    # 3 gold spans, 2 predicted, 1 right: P = 1/2, R = 1/3, F1 = 2PR/(P+R) = 0.4
    s = seqeval.span_scores([["B-PER", "O", "B-LOC", "I-LOC", "B-PER"]], [["B-PER", "O", "B-LOC", "O", "O"]])
    assert (s["precision"], s["recall"]) == (0.5, 1 / 3) and abs(s["f1"] - 0.4) < 1e-12
    # Nothing predicted: 0 everywhere, not NaN.
    assert seqeval.span_scores([["B-PER"]], [["O"]])["f1"] == 0.0
    with pytest.raises(ValueError, match="sentence 0: 2 gold labels but 1 predicted"):
        seqeval.span_scores([["O", "O"]], [["O"]])


def test_scheme_detection_and_check():
    assert seqeval.detect_scheme(NER) == "bio"
    assert seqeval.detect_scheme(("O", "B-X", "E-X", "S-X", "I-X")) == "bioes"
    assert seqeval.detect_scheme(("NOUN", "VERB", ".")) == "none"
    with pytest.raises(ValueError, match=r"\['E-X'\] do not fit the 'bio' scheme"):
        seqeval.check_scheme(("O", "B-X", "E-X"), "bio")


@pytest.mark.filterwarnings("ignore:.*ill-defined")
def test_matches_seqeval_on_random_sequences():
    """Cross-check (seqeval from the [test] extra): default and strict modes, BIO and BIOES."""
    sq = pytest.importorskip("seqeval.metrics")
    from seqeval.scheme import IOB2, IOBES
    rng = random.Random(0)
    for scheme, labels, sq_scheme in (("bio", NER, IOB2),
                                      ("bioes", ("O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "E-LOC", "S-LOC"), IOBES)):
        for _ in range(200):
            gold = [[rng.choice(labels) for _ in range(rng.randint(0, 8))] for _ in range(rng.randint(1, 5))]
            pred = [[rng.choice(labels) for _ in s] for s in gold]
            for strict in (False, True):
                kw = {"mode": "strict", "scheme": sq_scheme} if strict else {}
                mine = seqeval.span_scores(gold, pred, strict=strict, scheme=scheme)
                ref = (sq.precision_score(gold, pred, **kw), sq.recall_score(gold, pred, **kw), sq.f1_score(gold, pred, **kw))
                assert np.allclose((mine["precision"], mine["recall"], mine["f1"]), ref, atol=1e-12), (gold, pred, strict)


# ------------------------------------------------------------------------------- bad input

def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_tokens_and_tags_of_different_lengths_name_the_line(tmp_path, tok):
    from jaxbert.data.sources import JsonlSource
    path = _jsonl(tmp_path / "bad.jsonl", [{"tokens": ["a", "b"], "tags": ["A", "A"]},
                                           {"tokens": ["a", "b", "c"], "tags": ["A", "A"]}])
    with pytest.raises(ValueError, match=r"bad\.jsonl line 2 .*3 tokens but 2 tags"):
        build_token_features(JsonlSource(path), tok, max_length=16, label_map=LabelMap("tags", ["A"]))


def test_tag_outside_label_set_names_line_and_word(tmp_path, tok):
    from jaxbert.data.sources import JsonlSource
    path = _jsonl(tmp_path / "bad.jsonl", [{"tokens": ["a"], "tags": ["A"]}, {"tokens": ["x", "dog"], "tags": ["A", "NOUNN"]}])
    with pytest.raises(ValueError, match=r"bad\.jsonl line 2 .*tags\[1\] \(word 'dog'\).*'NOUNN'.*valid labels \['A'\]"):
        build_token_features(JsonlSource(path), tok, max_length=16, label_map=LabelMap("tags", ["A"]))


def test_non_string_token_is_named(tmp_path, tok):
    from jaxbert.data.sources import JsonlSource
    path = _jsonl(tmp_path / "bad.jsonl", [{"tokens": ["a", 3], "tags": ["A", "A"]}])
    with pytest.raises(TypeError, match=r"line 1 .*tokens\[1\] must be str"):
        build_token_features(JsonlSource(path), tok, max_length=16, label_map=LabelMap("tags", ["A"]))


# ------------------------------------------------------------------------------- engine + checkpoint

@pytest.fixture(scope="module")
def brown_small(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("brown")
    train = _jsonl(root / "train.jsonl", read_jsonl(data_dir / "brown" / "pos_train.jsonl.gz", 48))
    val = _jsonl(root / "validation.jsonl", read_jsonl(data_dir / "brown" / "pos_validation.jsonl", 12))
    return train, val


def test_pos_tagger_trains_and_predictions_survive_checkpoint(tmp_path, brown_small, minilm_dir):
    from experiments.configs.finetune_token_classification import get_config
    c = quiet(get_config("brown_pos,runlocal,tiny"))
    c.data.train, c.data.validation, c.data.test = str(brown_small[0]), str(brown_small[1]), None
    c.eval_splits = ("validation",)
    c.data.train_subset = None
    c.num_train_steps = 3
    (task, params), (task2, params2), result = train_and_restore(c, tmp_path / "run")
    m = result["eval"]["validation"]
    assert m["num_words"] == sum(len(r["tokens"]) for r in read_jsonl(brown_small[1]))
    assert 0.0 <= m["accuracy"] <= 1.0 and np.isfinite(m["loss"])
    sentences = [r["tokens"] for r in read_jsonl(brown_small[1])] + [["Zürich", "naïvely", "ran", "."]]
    before = task.predict_words(params, sentences)
    after = task2.predict_words(params2, sentences)
    assert before == after
    assert [len(p) for p in before] == [len(s) for s in sentences]
    assert set(t for p in before for t in p) <= set(task.label_map.labels)
    # The Trainer's own metric agrees with predict_words on the same sentences.
    gold = [r["tags"] for r in read_jsonl(brown_small[1])]
    acc = np.mean([p == g for ps, gs in zip(before, gold) for p, g in zip(ps, gs)])
    assert abs(acc - m["accuracy"]) < 1e-9


def test_resume_with_another_label_set_is_refused(tmp_path, brown_small, minilm_dir):
    """Resuming under another label order is refused with both label lists named (the data iterator
    checks first; the task's own ``load_extra_state`` check is the second line)."""
    from experiments.configs.finetune_token_classification import get_config
    from jaxbert.train.loop import train_and_evaluate
    c = quiet(get_config("brown_pos,runlocal,tiny"))
    c.data.train, c.data.validation, c.data.test = str(brown_small[0]), str(brown_small[1]), None
    c.eval_splits = ("validation",)
    c.data.train_subset = None
    c.num_train_steps = 2
    train_and_evaluate(c, tmp_path / "run")  # saves at the end (step 2)
    c.num_train_steps = 4
    c.data.labels = tuple(reversed(c.data.labels))  # same shapes, other meaning of every class id
    c.allow_config_change = True  # past the resume config check (run_config): the deeper checks are tested
    with pytest.raises(ValueError, match="labels: saved"):  # the data stream notices first
        train_and_evaluate(c, tmp_path / "run")
