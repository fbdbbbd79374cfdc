"""Extractive QA inputs: SQuAD v1.1 / v2.0 JSON -> examples -> overlapping-window features.

:func:`read_squad` reads the official files unchanged::

    {"version": "v2.0", "data": [{"title": ..., "paragraphs": [{"context": ...,
        "qas": [{"id": ..., "question": ...,
                 "answers": [{"text": ..., "answer_start": 17}, ...],
                 "is_impossible": false}]}]}]}       # is_impossible / plausible_answers: v2.0 only

Every answer is checked against its context (``context[answer_start:answer_start+len(text)]
== text``); a mismatch stops with the file, question id and what the context holds there
(``answer_mismatch="skip"`` drops such answers instead, ``"nearest"`` moves them to the
nearest exact occurrence of the text; both are counted in :attr:`SquadFile.fixes`).

:func:`build_qa_features` tokenizes ``question [SEP] context`` pairs. A context longer than
the window is split into several features whose context parts overlap by ``doc_stride``
tokens (Hugging Face's convention: ``stride`` = overlap, as in ``run_qa.py``'s
``--doc_stride``); the question is cut to ``max_query_length`` tokens first. Each feature
keeps its example index and, per token, the character span in the context (``-1`` for
question / special / padding tokens), so a predicted token span maps back to the exact
context substring. Training targets ``start_positions`` / ``end_positions`` are the first and
last tokens of the first gold answer when it lies wholly inside the window, else the
``[CLS]`` position 0 (also for unanswerable questions).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ANSWER_MISMATCH", "QAExample", "QAFeatures", "SquadFile", "build_qa_features", "read_squad"]

ANSWER_MISMATCH = ("error", "skip", "nearest")


@dataclasses.dataclass(frozen=True)
class QAExample:
    id: str
    question: str
    context: str
    answers: tuple[str, ...]  # gold texts (v2 unanswerable: empty)
    answer_starts: tuple[int, ...]
    is_impossible: bool = False
    title: str = ""


@dataclasses.dataclass
class SquadFile:
    path: str
    version: str
    examples: list[QAExample]
    has_impossible: bool
    fixes: dict[str, int] = dataclasses.field(default_factory=dict)

    def gold_answers(self) -> dict[str, list[str]]:
        """Question id -> gold answer texts (empty list = unanswerable), for :mod:`jaxbert.eval.squad`."""
        return {ex.id: list(ex.answers) for ex in self.examples}


def _type_error(where: str, key: str, want: str, got: Any) -> TypeError:
    return TypeError(f"{where}: {key!r} must be {want}, got {type(got).__name__}: {str(got)[:80]!r}")


def _locate(context: str, text: str, start: int) -> int | None:
    """Start of the exact occurrence of ``text`` in ``context`` nearest to ``start`` (None: absent)."""
    best, i = None, context.find(text)
    while i != -1:
        if best is None or abs(i - start) < abs(best - start):
            best = i
        i = context.find(text, i + 1)
    return best


def read_squad(path: str | os.PathLike, answer_mismatch: str = "error") -> SquadFile:
    """Parse an official SQuAD v1.1/v2.0 JSON file, checking every field and answer span."""
    if answer_mismatch not in ANSWER_MISMATCH:
        raise ValueError(f"answer_mismatch must be one of {list(ANSWER_MISMATCH)}, got {answer_mismatch!r}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"SQuAD JSON file not found: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ValueError(f"{path}: expected the SQuAD layout {{'version': ..., 'data': [articles]}}, "
                         f"got {type(doc).__name__} with keys {sorted(doc) if isinstance(doc, dict) else '-'}")
    examples: list[QAExample] = []
    fixes = {"skipped_answers": 0, "moved_answers": 0, "dropped_questions": 0}
    seen: set[str] = set()
    has_impossible = False
    for a, article in enumerate(doc["data"]):
        where_a = f"{path}: data[{a}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise ValueError(f"{where_a}: an article needs a 'paragraphs' list")
        title = str(article.get("title", ""))
        for p, para in enumerate(article["paragraphs"]):
            where_p = f"{where_a} ({title!r}) paragraphs[{p}]"
            if not isinstance(para, dict):
                raise _type_error(where_p, "paragraph", "an object", para)
            context, qas = para.get("context"), para.get("qas")
            if not isinstance(context, str):
                raise _type_error(where_p, "context", "a string", context)
            if not isinstance(qas, list):
                raise _type_error(where_p, "qas", "a list", qas)
            for q, qa in enumerate(qas):
                where = f"{where_p} qas[{q}]"
                if not isinstance(qa, dict):
                    raise _type_error(where, "qa", "an object", qa)
                qid, question = qa.get("id"), qa.get("question")
                if not isinstance(qid, str) or not qid:
                    raise _type_error(where, "id", "a non-empty string", qid)
                where = f"{where_p} question {qid!r}"
                if qid in seen:
                    raise ValueError(f"{where}: duplicate question id")
                seen.add(qid)
                if not isinstance(question, str):
                    raise _type_error(where, "question", "a string", question)
                impossible = qa.get("is_impossible", False)
                if not isinstance(impossible, bool):
                    raise _type_error(where, "is_impossible", "true or false", impossible)
                has_impossible |= impossible
                answers = qa.get("answers", [])
                if not isinstance(answers, list):
                    raise _type_error(where, "answers", "a list", answers)
                if impossible and answers:
                    raise ValueError(f"{where}: is_impossible is true but it has {len(answers)} answers")
                texts, starts = [], []
                for k, ans in enumerate(answers):
                    if not isinstance(ans, dict):
                        raise _type_error(f"{where} answers[{k}]", "answer", "an object", ans)
                    text, start = ans.get("text"), ans.get("answer_start")
                    if not isinstance(text, str) or not text:
                        raise _type_error(f"{where} answers[{k}]", "text", "a non-empty string", text)
                    if isinstance(start, bool) or not isinstance(start, int):
                        raise _type_error(f"{where} answers[{k}]", "answer_start", "an int", start)
                    found = context[start:start + len(text)] if start >= 0 else None
                    if found != text:
                        if answer_mismatch == "error":
                            raise ValueError(
                                f"{where} answers[{k}]: answer {text!r} does not match its context at "
                                f"answer_start={start}: the context has {found!r} there (context length "
                                f"{len(context)}). Fix the file, or set qa.answer_mismatch='nearest' / 'skip'.")
                        moved = _locate(context, text, start) if answer_mismatch == "nearest" else None
                        if moved is None:
                            fixes["skipped_answers"] += 1
                            continue
                        fixes["moved_answers"] += 1
                        start = moved
                    texts.append(text)
                    starts.append(start)
                if not impossible and not texts:
                    if answers:  # every answer was skipped
                        fixes["dropped_questions"] += 1
                        continue
                    raise ValueError(f"{where}: an answerable question (is_impossible false or absent) "
                                     "needs at least one answer")
                examples.append(QAExample(qid, question, context, tuple(texts), tuple(starts), impossible, title))
    if not examples:
        raise ValueError(f"{path}: no questions found")
    return SquadFile(str(path), str(doc.get("version", "")), examples, has_impossible,
                     {k: v for k, v in fixes.items() if v})


@dataclasses.dataclass
class QAFeatures:
    """Window features plus what decoding needs: example of each feature, char offsets per token."""

    examples: list[QAExample]
    features: list[dict[str, np.ndarray]]  # input_ids, token_type_ids, start_positions, end_positions
    example_index: np.ndarray  # [F]
    offsets: list[np.ndarray]  # per feature [n, 2] context char span of each token; -1 outside context

    def __len__(self) -> int:
        return len(self.features)


def _cut_question(tokenizer: Any, question: str, max_query_length: int) -> str:
    enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    offs = enc["offset_mapping"]
    if len(offs) <= max_query_length:
        return question
    return question[:offs[max_query_length - 1][1]]


def build_qa_features(examples: list[QAExample], tokenizer: Any, *, max_length: int, doc_stride: int,
                      max_query_length: int = 64, batch: int = 512) -> QAFeatures:
    """Tokenize examples into overlapping windows (see the module docstring)."""
    if max_length - max_query_length - 3 <= doc_stride:
        raise ValueError(
            f"qa.doc_stride={doc_stride} must be smaller than the room for context in a window: "
            f"max_length ({max_length}) - max_query_length ({max_query_length}) - 3 special tokens "
            f"= {max_length - max_query_length - 3} tokens; lower doc_stride or raise max_length")
    if doc_stride < 0:
        raise ValueError(f"qa.doc_stride must be >= 0, got {doc_stride}")
    if getattr(tokenizer, "padding_side", "right") != "right":
        raise ValueError("QA features assume the question first and right padding")
    features, ex_index, offsets = [], [], []
    for b0 in range(0, len(examples), batch):
        chunk = examples[b0:b0 + batch]
        questions = [_cut_question(tokenizer, ex.question.lstrip(), max_query_length) for ex in chunk]
        enc = tokenizer(questions, [ex.context for ex in chunk], truncation="only_second",
                        max_length=max_length, stride=doc_stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True, padding=False)
        for i, ids in enumerate(enc["input_ids"]):
            e = int(enc["overflow_to_sample_mapping"][i])
            ex = chunk[e]
            seq = enc.sequence_ids(i)
            offs = np.asarray(enc["offset_mapping"][i], np.int64).reshape(-1, 2)
            in_ctx = np.array([s == 1 for s in seq])
            offs[~in_ctx] = -1
            start_pos = end_pos = 0
            if ex.answers:
                a_start = ex.answer_starts[0]
                a_end = a_start + len(ex.answers[0])
                ctx_tokens = np.flatnonzero(in_ctx)
                if len(ctx_tokens) and offs[ctx_tokens[0], 0] <= a_start and offs[ctx_tokens[-1], 1] >= a_end:
                    # first token starting at or before the answer start that ends after it; last
                    # token ending at or after the answer end
                    starts = ctx_tokens[offs[ctx_tokens, 0] <= a_start]
                    start_pos = int(starts[-1])
                    ends = ctx_tokens[offs[ctx_tokens, 1] >= a_end]
                    end_pos = int(ends[0])
            types = enc["token_type_ids"][i] if "token_type_ids" in enc else [int(s == 1) for s in seq]
            features.append({"input_ids": np.asarray(ids, np.int32),
                             "token_type_ids": np.asarray(types, np.int32),
                             "start_positions": np.int32(start_pos), "end_positions": np.int32(end_pos)})
            ex_index.append(b0 + e)
            offsets.append(offs)
    return QAFeatures(examples=list(examples), features=features, example_index=np.asarray(ex_index, np.int64),
                      offsets=offsets)
