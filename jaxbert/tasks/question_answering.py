"""Extractive question answering on SQuAD v1.1 / v2.0 JSON files, as a task for the training loop.

Config keys read (engine defaults in ``experiments/configs/common.py``, this task's in
:meth:`QuestionAnsweringTask.config_section`; recipe:
``experiments/configs/finetune_qa.py``)::

    model.init_from / model.preset / model.overrides    as for classification
    data.train / validation / test      SQuAD-format JSON files (read unchanged)
    data.max_length, data.buckets       window length in tokens (question + context + 3 specials)
    qa.doc_stride                       overlap (tokens) between windows of a long context
    qa.max_query_length                 questions are cut to this many tokens
    qa.max_answer_length                longest answer span considered, in tokens
    qa.version_2_with_negative          allow "no answer" (None: on if any file has is_impossible)
    qa.null_score_diff_threshold        answer "" when null score - best span score > this
    qa.answer_mismatch                  "error" | "nearest" | "skip" for answers not found at answer_start

Decoding (:func:`decode_answers`): for every window, the best span ``(s, e)`` of context tokens
with ``e - s + 1 <= max_answer_length`` maximising ``start_logit[s] + end_logit[e]`` (an exact
search, not HF's top-20 heuristic); the example's answer is the best span over its windows,
cut from the context by the tokens' character offsets. With no-answer on, the null score is
the lowest ``start_logit[CLS] + end_logit[CLS]`` over the windows (HF ``run_qa``), and the
answer is ``""`` when ``null - best > null_score_diff_threshold``. Metrics: ``exact`` and
``f1`` (official SQuAD normalisation, :mod:`jaxbert.eval.squad`, 0-100), the HasAns/NoAns
breakdown, and ``loss`` (mean of start/end cross-entropy per window).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

import ml_collections
from ml_collections import config_dict

from jaxbert.data.features.qa import QAExample, QAFeatures, SquadFile, build_qa_features, read_squad
from jaxbert.eval.squad import squad_scores
from jaxbert.objectives.token_span import mask_padding, span_cross_entropy
from jaxbert.tasks.base import register
from jaxbert.tasks.feature_task import FeatureTask, pad_outputs, splits_of, subset_indices


def best_span(start: np.ndarray, end: np.ndarray, in_context: np.ndarray, max_answer_length: int
              ) -> tuple[float, int, int]:
    """``(score, s, e)`` maximising ``start[s] + end[e]`` over context tokens, ``0 <= e - s < max_answer_length``.

    ``(-inf, -1, -1)`` when the window has no context token.
    """
    s_sc = np.where(in_context, np.asarray(start, np.float64), -np.inf)
    e_sc = np.where(in_context, np.asarray(end, np.float64), -np.inf)
    n = len(s_sc)
    best = (-np.inf, -1, -1)
    for d in range(min(max_answer_length, n)):
        total = s_sc[:n - d] + e_sc[d:]
        i = int(np.argmax(total))
        if total[i] > best[0]:
            best = (float(total[i]), i, i + d)
    return best


def decode_answers(qa: QAFeatures, start_logits: np.ndarray, end_logits: np.ndarray, *,
                   max_answer_length: int, version_2: bool, null_threshold: float = 0.0,
                   feature_index: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Per question id: ``{"text", "score", "null_score", "start", "end"}`` (chars; text = context[start:end]).

    ``start_logits/end_logits [N, L]`` belong to features ``feature_index`` (default ``0..N-1``).
    """
    if feature_index is None:
        feature_index = np.arange(len(start_logits))
    per_example: dict[int, list[int]] = {}
    for row, f in enumerate(np.asarray(feature_index)):
        if f >= 0:
            per_example.setdefault(int(qa.example_index[f]), []).append(row)
    out = {}
    for e, ex in enumerate(qa.examples):
        rows = per_example.get(e, [])
        best = (-np.inf, -1, -1, -1)
        null = np.inf
        for row in rows:
            f = int(feature_index[row])
            offs = qa.offsets[f]
            n = len(offs)
            sc, s, t = best_span(start_logits[row][:n], end_logits[row][:n], offs[:, 0] >= 0, max_answer_length)
            if sc > best[0]:
                best = (sc, s, t, f)
            null = min(null, float(start_logits[row][0]) + float(end_logits[row][0]))
        if best[3] >= 0:
            offs = qa.offsets[best[3]]
            c0, c1 = int(offs[best[1], 0]), int(offs[best[2], 1])
            text = ex.context[c0:c1]
        else:
            c0 = c1 = -1
            text = ""
        if version_2 and (best[3] < 0 or null - best[0] > null_threshold):
            text, c0, c1 = "", -1, -1
        out[ex.id] = {"text": text, "score": best[0], "null_score": null, "start": c0, "end": c1}
    return out


@register("question_answering")
class QuestionAnsweringTask(FeatureTask):
    """Builds the model, window features, span loss and SQuAD metrics."""

    hf_task = "question_answering"
    token_outputs = True

    @classmethod
    def config_section(cls) -> ml_collections.ConfigDict:
        c = super().config_section()
        c.qa = ml_collections.ConfigDict()  # extractive QA (SQuAD JSON)
        c.qa.doc_stride = 128  # overlap in tokens between windows of a long context (HF run_qa convention)
        c.qa.max_query_length = 64
        c.qa.max_answer_length = 30
        c.qa.version_2_with_negative = config_dict.placeholder(bool)  # None: on if a file has is_impossible
        c.qa.null_score_diff_threshold = 0.0
        c.qa.answer_mismatch = "error"  # error | nearest | skip (answer text not at answer_start)
        return c

    def __init__(self, config: Any):
        d, q = config.data, config.qa
        if not d.train:
            raise ValueError("data.train (a SQuAD-format JSON file) is required for question answering")
        mismatch = q.get("answer_mismatch", "error")
        self.train_file = read_squad(d.train, mismatch)
        self.eval_files: dict[str, SquadFile] = {s: read_squad(d[s], mismatch) for s in splits_of(config)}
        v2 = q.get("version_2_with_negative")
        if v2 is None:
            v2 = self.train_file.has_impossible or any(f.has_impossible for f in self.eval_files.values())
        self.version_2 = bool(v2)
        if not self.version_2:
            for f in [self.train_file, *self.eval_files.values()]:
                if f.has_impossible:
                    raise ValueError(f"{f.path} has unanswerable questions (is_impossible) but "
                                     "qa.version_2_with_negative is False")
        self.doc_stride, self.max_query_length = int(q.doc_stride), int(q.max_query_length)
        self.max_answer_length = int(q.max_answer_length)
        self.null_threshold = float(q.get("null_score_diff_threshold", 0.0))
        if self.max_answer_length < 1:
            raise ValueError(f"qa.max_answer_length must be >= 1, got {self.max_answer_length}")

        self.load_model_and_tokenizer(config, self.hf_task)
        self.max_length = int(d.max_length)
        examples = self.train_file.examples
        idx = subset_indices(len(examples), d.get("train_subset"), d.get("train_subset_seed", 0))
        self.train_qa = self._features([examples[i] for i in idx])
        self.train_features = self.train_qa.features
        self.eval_qa = {s: self._features(f.examples) for s, f in self.eval_files.items()}
        self.eval_features = {s: qa.features for s, qa in self.eval_qa.items()}
        self.seq_pad = {"input_ids": self.tokenizer.pad_token_id or 0, "token_type_ids": 0}
        self.pad_feature = {"input_ids": np.array([self.tokenizer.cls_token_id, self.tokenizer.sep_token_id], np.int32),
                            "token_type_ids": np.zeros(2, np.int32), "start_positions": np.int32(0),
                            "end_positions": np.int32(0)}
        self._finish_init(config)

    def _features(self, examples: list[QAExample]) -> QAFeatures:
        return build_qa_features(examples, self.tokenizer, max_length=self.max_length, doc_stride=self.doc_stride,
                                 max_query_length=self.max_query_length)

    def pipeline_spec(self) -> dict:
        return {"task": self.name, "doc_stride": self.doc_stride, "max_query_length": self.max_query_length}

    # -------------------------------------------------------------------- model
    def _logits(self, params, batch, rng=None, deterministic=True):
        out = self.apply(params, batch, rng, deterministic)
        mask = batch["attention_mask"]
        return mask_padding(out["start_logits"], mask), mask_padding(out["end_logits"], mask)

    def loss_fn(self, params, batch, rng, deterministic: bool = False):
        start, end = self._logits(params, batch, rng, deterministic)
        return span_cross_entropy(start, end, batch["start_positions"], batch["end_positions"], batch.get("weights"))

    def predict_fn(self, params, batch):
        start, end = self._logits(params, batch)
        _, sums = span_cross_entropy(start, end, batch["start_positions"], batch["end_positions"], batch["weights"])
        out = {"start_logits": pad_outputs(start, self.max_length, -1e9),
               "end_logits": pad_outputs(end, self.max_length, -1e9),
               "feature_index": batch["feature_index"], "weights": batch["weights"]}
        return out, sums

    def _decode(self, qa: QAFeatures, outputs: dict[str, np.ndarray], rows: np.ndarray, local: np.ndarray):
        return decode_answers(qa, outputs["start_logits"][rows], outputs["end_logits"][rows],
                              max_answer_length=self.max_answer_length, version_2=self.version_2,
                              null_threshold=self.null_threshold, feature_index=local)

    @classmethod
    def config_rules(cls) -> tuple:
        from jaxbert.config_rules import int_at_least  # pylint: disable=import-outside-toplevel
        return super().config_rules() + (
            int_at_least("qa.doc_stride", 0, "tokens of overlap between windows of a long context"),
            int_at_least("qa.max_query_length", 1, "question tokens kept"),
            int_at_least("qa.max_answer_length", 1, "longest answer span in tokens"))

    def metric_names(self, split: str) -> frozenset[str]:
        # squad_scores' names depend on which kinds of question the split holds (HasAns_* / NoAns_*):
        # scoring the gold answers against themselves gives exactly the names a real evaluation reports.
        gold = self.eval_files[split].gold_answers()
        perfect = {qid: (answers[0] if answers else "") for qid, answers in gold.items()}
        return frozenset(squad_scores(gold, perfect)) | {"loss", "span_accuracy"}

    def eval_metrics(self, outputs: dict[str, np.ndarray], sums: dict[str, float]) -> dict[str, float]:
        split, rows, local = self.split_rows(outputs)
        answers = self._decode(self.eval_qa[split], outputs, rows, local)
        metrics = squad_scores(self.eval_files[split].gold_answers(), {k: v["text"] for k, v in answers.items()})
        metrics["loss"] = sums["loss"] / max(sums["weight"], 1.0)
        metrics["span_accuracy"] = sums["accuracy"] / max(sums["weight"], 1.0)
        return metrics

    def predict(self, params, examples: list[QAExample] | str | os.PathLike, batch_size: int = 32
                ) -> dict[str, str]:
        """Answer text per question id for examples (or a SQuAD JSON path)."""
        if not isinstance(examples, list):
            examples = read_squad(examples, self.config.qa.get("answer_mismatch", "error")).examples
        qa = self._features(examples)
        out = self.predict_features(params, qa.features, batch_size)
        answers = decode_answers(qa, out["start_logits"], out["end_logits"], max_answer_length=self.max_answer_length,
                                 version_2=self.version_2, null_threshold=self.null_threshold,
                                 feature_index=out["feature_index"])
        return {k: v["text"] for k, v in answers.items()}

    # -------------------------------------------------------------------- persistence
    def extra_state(self) -> dict[str, Any]:
        return {"qa": {"doc_stride": self.doc_stride, "max_query_length": self.max_query_length,
                       "max_answer_length": self.max_answer_length, "version_2_with_negative": self.version_2,
                       "null_score_diff_threshold": self.null_threshold}}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        saved = extra.get("qa", {})
        self.version_2 = bool(saved.get("version_2_with_negative", self.version_2))
        self.null_threshold = float(saved.get("null_score_diff_threshold", self.null_threshold))
