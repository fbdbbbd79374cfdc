"""Extractive QA: the official SQuAD layout, windows and offsets (long and unicode contexts),
span decoding, EM/F1 against hand-computed cases, bad input, and an engine run whose
predictions survive a checkpoint round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxbert.data.features.qa import build_qa_features, read_squad
from jaxbert.eval.squad import exact_match, f1_score, normalize_answer, squad_scores
from jaxbert.tasks.question_answering import best_span, decode_answers
from task_roundtrip import quiet, train_and_restore

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
V1, V2 = FIXTURES / "squad_v1.json", FIXTURES / "squad_v2.json"


@pytest.fixture(scope="module")
def tok(minilm_dir):
    from jaxbert.data.tokenization import load_tokenizer
    return load_tokenizer(minilm_dir)


# ------------------------------------------------------------------------------- reading

def test_reads_official_v1_and_v2_layout_unchanged():
    v1 = read_squad(V1)
    raw = json.loads(V1.read_text(encoding="utf-8"))
    raw_qas = [qa for art in raw["data"] for para in art["paragraphs"] for qa in para["qas"]]
    assert [ex.id for ex in v1.examples] == [qa["id"] for qa in raw_qas]
    assert not v1.has_impossible and v1.version == "1.1"
    brown1 = v1.examples[0]
    assert brown1.answers == ("Henry Kučera and W. Nelson Francis", "Henry Kučera and W. Nelson Francis at Brown University")
    assert brown1.title == "Brown_Corpus" and brown1.context.startswith("The Brown Corpus")
    v2 = read_squad(V2)
    assert v2.has_impossible and v2.version == "v2.0"
    gold = v2.gold_answers()
    assert gold["v2-brown-2"] == [] and gold["v2-brown-1"] == ["Henry Kučera and W. Nelson Francis"]


# ------------------------------------------------------------------------------- windows + offsets

@pytest.mark.parametrize("max_length,stride", [(48, 8), (64, 24), (384, 128)])
def test_offsets_map_gold_spans_to_the_exact_context_substring(tok, max_length, stride):
    squad = read_squad(V1)
    qa = build_qa_features(squad.examples, tok, max_length=max_length, doc_stride=stride, max_query_length=16)
    found = set()
    for f, feat in enumerate(qa.features):
        assert len(feat["input_ids"]) <= max_length
        ex = qa.examples[qa.example_index[f]]
        s, e = int(feat["start_positions"]), int(feat["end_positions"])
        offs = qa.offsets[f]
        if s == 0:
            assert e == 0
            continue
        # The labelled token span covers exactly the first gold answer (answers here are whole tokens).
        assert ex.context[offs[s, 0]:offs[e, 1]] == ex.answers[0]
        found.add(ex.id)
    assert found == {ex.id for ex in squad.examples}  # every answer lies wholly in some window
    long_windows = [f for f in range(len(qa)) if qa.examples[qa.example_index[f]].id == "long-1"]
    if max_length < 384:
        assert len(long_windows) > 2  # the long context needs several windows ...
        labels = [int(qa.features[f]["start_positions"]) for f in long_windows]
        assert 0 in labels and any(labels)  # ... some hold the answer, some do not
        # Consecutive windows overlap by exactly `stride` context tokens.
        a, b = (qa.offsets[f] for f in long_windows[:2])
        ctx_a, ctx_b = a[a[:, 0] >= 0], b[b[:, 0] >= 0]
        assert (ctx_a[-stride:] == ctx_b[:stride]).all()


def test_unicode_offsets_are_character_offsets(tok):
    squad = read_squad(V1)
    qa = build_qa_features(squad.examples, tok, max_length=64, doc_stride=16, max_query_length=16)
    zurich = [f for f in range(len(qa)) if qa.examples[qa.example_index[f]].title == "Zürich"]
    pieces = {qa.examples[qa.example_index[f]].context[o[0]:o[1]] for f in zurich for o in qa.offsets[f] if o[0] >= 0}
    assert {"Zürich", "naïve", "東", "京", "😊"} <= pieces  # whole tokens, accents kept
    f = zurich[0]
    ctx = qa.examples[qa.example_index[f]].context
    a = ctx.index("crème brûlée")
    inside = [ctx[o[0]:o[1]] for o in qa.offsets[f] if a <= o[0] < a + len("crème brûlée")]
    assert len(inside) > 2 and "".join(inside) == "crèmebrûlée"  # word pieces tile the words exactly


def test_decoding_returns_exact_context_substrings_over_windows(tok):
    squad = read_squad(V1)
    qa = build_qa_features(squad.examples, tok, max_length=48, doc_stride=8, max_query_length=16)
    n, length = len(qa), max(len(f["input_ids"]) for f in qa.features)
    start = np.full((n, length), -5.0)
    end = np.full((n, length), -5.0)
    for f, feat in enumerate(qa.features):
        s, e = int(feat["start_positions"]), int(feat["end_positions"])
        if s:  # gold positions get the highest logits where the window holds the answer
            start[f, s] = end[f, e] = 5.0 + f % 3  # windows score differently
    out = decode_answers(qa, start, end, max_answer_length=30, version_2=False)
    assert {k: v["text"] for k, v in out.items()} == {ex.id: ex.answers[0] for ex in squad.examples}
    for ex in squad.examples:
        assert ex.context[out[ex.id]["start"]:out[ex.id]["end"]] == out[ex.id]["text"]
    # max_answer_length in tokens: a 1-token limit cannot produce the multi-token answers.
    short = decode_answers(qa, start, end, max_answer_length=1, version_2=False)
    assert short["brown-2"]["text"] != "about one million words" and short["ada-1"]["text"] == "1843"


def test_no_answer_decision_v2(tok):
    squad = read_squad(V2)
    qa = build_qa_features(squad.examples, tok, max_length=384, doc_stride=128)
    n, length = len(qa), max(len(f["input_ids"]) for f in qa.features)
    start, end = np.zeros((n, length)), np.zeros((n, length))
    for f, feat in enumerate(qa.features):
        s, e = int(feat["start_positions"]), int(feat["end_positions"])
        start[f, s] += 3.0
        end[f, e] += 3.0  # answerable: span 6 vs null 0; unanswerable: CLS 6 vs best span 0
    out = decode_answers(qa, start, end, max_answer_length=30, version_2=True)
    for ex in squad.examples:
        assert out[ex.id]["text"] == (ex.answers[0] if ex.answers else "")
    # "" when null - best > threshold: a very low threshold turns every answer into "no answer" ...
    out = decode_answers(qa, start, end, max_answer_length=30, version_2=True, null_threshold=-100.0)
    assert all(v["text"] == "" for v in out.values())
    assert squad_scores(squad.gold_answers(), {k: v["text"] for k, v in out.items()})["NoAns_exact"] == 100.0
    # ... a very high one answers everything (as v1 decoding does).
    out = decode_answers(qa, start, end, max_answer_length=30, version_2=True, null_threshold=100.0)
    assert all(v["text"] for v in out.values())


def test_best_span_respects_context_and_length():
    start = np.array([9.0, 1, 2, 0, 0])
    end = np.array([9.0, 0, 0, 0, 3])
    ctx = np.array([False, True, True, True, True])  # CLS not a context token
    assert best_span(start, end, ctx, 30) == (5.0, 2, 4)
    assert best_span(start, end, ctx, 2) == (3.0, 4, 4)  # (2, 4) is 3 tokens long; ties keep the shortest
    assert best_span(start, end, np.zeros(5, bool), 30)[1] == -1


# ------------------------------------------------------------------------------- EM / F1

def test_squad_normalisation_and_scores_hand_computed():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert exact_match("Denver Broncos", "the denver broncos.") == 1
    # pred [cat, sat, on, mat] vs gold [cat, sat]: P = 2/4, R = 1, F1 = 2/3
    assert abs(f1_score("the cat sat", "cat sat on mat") - 2 / 3) < 1e-12
    assert f1_score("cat", "dog") == 0.0
    assert f1_score("", "") == 1.0 and f1_score("", "cat") == 0.0 and f1_score("cat", "") == 0.0
    gold = {"q1": ["Denver Broncos", "Broncos"], "q2": ["one million words"], "q3": [], "q4": ["1843"]}
    pred = {"q1": "Broncos", "q2": "about one million", "q3": "", "q4": "in 1843"}
    s = squad_scores(gold, pred)
    # q1: EM 1 F1 1; q2: EM 0, F1 2*(2/3)*(2/3)/(4/3) = 2/3; q3: EM 1 F1 1 (no answer agreed);
    # q4: EM 0, F1 = 2*(1/2)*1/(3/2) = 2/3
    assert s["exact"] == 50.0 and abs(s["f1"] - 100 * (1 + 2 / 3 + 1 + 2 / 3) / 4) < 1e-9
    assert s["HasAns_total"] == 3 and s["NoAns_total"] == 1 and s["NoAns_f1"] == 100.0
    s = squad_scores(gold, {"q1": "Broncos"})
    assert s["missing"] == 3 and s["exact"] == 25.0
    with pytest.raises(ValueError, match="unknown question ids"):
        squad_scores(gold, {"zzz": "x"})


# ------------------------------------------------------------------------------- bad input

def _write(tmp_path, doc) -> Path:
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return p


def _doc(answer_text, answer_start, context="Ada Lovelace wrote the algorithm in 1843."):
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": "When?", "answers": [{"text": answer_text, "answer_start": answer_start}]}]}]}]}


def test_answer_not_matching_its_context_is_named(tmp_path):
    path = _write(tmp_path, _doc("1843", 30))
    with pytest.raises(ValueError, match=r"question 'q1' answers\[0\]: answer '1843' does not match its context "
                                         r"at answer_start=30: the context has 'hm i' there"):
        read_squad(path)
    assert read_squad(path, "nearest").examples[0].answer_starts == (36,)
    # An answer text absent from the context: "nearest" cannot move it, so it is skipped and the
    # question (no answer left) dropped; both are counted.
    bad, good = _doc("1999", 3), _doc("1843", 36)
    good["data"][0]["paragraphs"][0]["qas"][0]["id"] = "q2"
    both = _write(tmp_path, {"version": "1.1", "data": bad["data"] + good["data"]})
    for mode in ("nearest", "skip"):
        squad = read_squad(both, mode)
        assert [ex.id for ex in squad.examples] == ["q2"]
        assert squad.fixes == {"skipped_answers": 1, "dropped_questions": 1}
    with pytest.raises(ValueError, match="answer '1999' does not match"):
        read_squad(both)


def test_malformed_squad_files(tmp_path):
    with pytest.raises(ValueError, match="expected the SQuAD layout"):
        read_squad(_write(tmp_path, [{"context": "x"}]))
    doc = _doc("1843", 36)
    del doc["data"][0]["paragraphs"][0]["qas"][0]["question"]
    with pytest.raises(TypeError, match=r"question 'q1': 'question' must be a string"):
        read_squad(_write(tmp_path, doc))
    with pytest.raises(FileNotFoundError, match="SQuAD JSON file not found"):
        read_squad(tmp_path / "nope.json")


def test_stride_too_large_is_a_clear_error(tok):
    with pytest.raises(ValueError, match="doc_stride=60 must be smaller"):
        build_qa_features(read_squad(V1).examples, tok, max_length=64, doc_stride=60, max_query_length=16)


# ------------------------------------------------------------------------------- engine + checkpoint

@pytest.mark.parametrize("fixture", ["fixture", "fixture_v2"])
def test_qa_task_trains_and_predictions_survive_checkpoint(tmp_path, fixture, minilm_dir):
    from experiments.configs.finetune_qa import get_config
    c = quiet(get_config(f"{fixture},runlocal,tiny"))
    c.num_train_steps = 3
    (task, params), (task2, params2), result = train_and_restore(c, tmp_path / "run")
    m = result["eval"]["validation"]
    assert m["total"] == len(read_squad(c.data.validation).examples) and m["missing"] == 0
    assert task.version_2 == (fixture == "fixture_v2") == task2.version_2
    before = task.predict(params, c.data.validation)
    after = task2.predict(params2, c.data.validation)
    assert before == after
    context = {ex.id: ex.context for ex in read_squad(c.data.validation).examples}
    assert all(text in context[qid] for qid, text in before.items())
    # The engine's EM/F1 is the official scoring of these very predictions.
    s = squad_scores(read_squad(c.data.validation).gold_answers(), before)
    assert abs(s["f1"] - m["f1"]) < 1e-9 and abs(s["exact"] - m["exact"]) < 1e-9
