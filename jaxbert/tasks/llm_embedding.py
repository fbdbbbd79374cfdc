"""LLM-to-bidirectional embedders (issue #6) as a task for the training loop: MNTP, contrastive
and GRL training of a Llama / Qwen2 decoder (:mod:`jaxbert.models.llm.model`), retrieval evaluation,
and an export that ``jaxbert.SentenceEncoder.from_pretrained`` loads.

Objectives (``llm.objective``), all reusing :mod:`jaxbert.objectives`:

``mntp``         masked next-token prediction in bidirectional mode (LLM2Vec step 1;
                 :mod:`jaxbert.objectives.mntp`): a fraction of tokens is corrupted host-side and
                 token ``i`` is predicted from the logits at ``i - 1``.
``contrastive``  InfoNCE of queries against their positive, the other queries' positives (in-batch
                 negatives) and every row's hard negatives, with a temperature; optional focal
                 weights and online hard-negative mixing (KaLM-Embedding-V2;
                 :mod:`jaxbert.objectives.llm_embedding`).
``grl``          contrastive + generation loss + KL(generation scores || embedding scores), ULLME's
                 generation-augmented representation learning (:mod:`jaxbert.objectives.grl`);
                 ``llm.grl.kl_gradient=False`` reproduces the reference, where the KL term reaches no
                 parameter.

LoRA (or any other PEFT method) comes from the engine's ``config.peft`` section, like every
task: the frozen base, the adapter-only checkpoint in ``WORKDIR/adapter`` and the merged export.

Config keys read (``experiments/configs/llm_embedding.py`` sets them all)::

    model.init_from   a .gguf file, an HF Llama/Qwen2 directory (e.g. an earlier run's export) or
                      "asset:smollm2"; None: random init of model.preset
    model.preset      a registry LLM preset (llama-tiny, qwen2-tiny, smollm2-135m)
    model.overrides   dtype, param_dtype, attention_implementation, remat (other keys must be None)
    data.train        JSONL: texts in data.text_field (mntp) or records with data.anchor_field,
                      data.positive_field and optionally data.negative_field (a str or a list)
    data.tokenizer    None: the checkpoint's (GGUF metadata / HF dir); a directory or "asset:NAME";
                      "words": a word-level tokenizer built from the run's texts (random init only)
    data.max_length, data.eval_max_length, data.buckets (train lengths), data.eval_buckets (eval lengths)
    llm.objective, llm.attention_mode, llm.pooling, llm.add_eos, llm.query_instruction,
    llm.doc_instruction, llm.temperature, llm.focal_gamma, llm.in_batch, llm.num_negatives,
    llm.word_vocab_size, llm.max_train_records, llm.mix.*, llm.mntp.*, llm.grl.*
    evals.<name>, eval_splits   retrieval (nDCG@10, MRR@10, Recall@k), lee, word_similarity sets

Batch layouts: :mod:`jaxbert.data.features.llm`. Train metrics: ``loss``, ``accuracy`` (MNTP:
top-1 of the masked tokens; contrastive / GRL: top-1 of each query's positive among the batch's
positives), and the objective's own terms (``infonce``, ``p_pos``, ``gen_loss``, ``kl_loss``, ...),
means over the global batch.

Export (``WORKDIR/export``): ``config.json`` + ``model.safetensors`` (transformers'
``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` reads them; LoRA merged) + the tokenizer, and a
``jaxbert_embedding`` entry in ``config.json`` (pooling, attention mode, EOS appending, max length,
instructions) from which ``SentenceEncoder.from_pretrained(export)`` takes its defaults. Pass the
query instruction at encode time: ``enc.encode(queries, instruction=...)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbert.data.batching import IndexedBatchIterator, bucket_length as bucket_for
from jaxbert.data.features.llm import build_word_tokenizer, pad_rows
from jaxbert.data.sources import JsonlSource
from jaxbert.eval import retrieval as retrieval_eval
from jaxbert.models.llm.pooling import canonical_pooling, llm_pool
from jaxbert.objectives import grl as grl_lib
from jaxbert.objectives import mntp as mntp_lib
from jaxbert.objectives.llm_embedding import contrastive_loss, mix_hard_negatives, normalize
from jaxbert.tasks.base import Task, register, resolve_model_path
from jaxbert.tasks.contrastive import _get, embedding_eval_metrics, eval_set_metric_names
from jaxbert.tasks.contrastive import load_eval_set as contrastive_load_eval_set

OBJECTIVES = ("mntp", "contrastive", "grl")
EVAL_KINDS = ("retrieval", "lee", "word_similarity")
EVAL_BUCKETS = (16, 32, 64, 128, 256, 512)
LLM_OVERRIDES = ("dtype", "param_dtype", "attention_implementation", "remat")
#: ``config.json`` key of the export's embedding settings (read by ``LlmSentenceEncoder.load``).
EMBEDDING_KEY = "jaxbert_embedding"


def load_eval_set(name: str, spec: Any):
    """A retrieval / similarity set from its ``evals.<name>`` section; errors name the set.

    The kinds an LLM embedder is evaluated on (:data:`EVAL_KINDS`), read by the contrastive
    task's loader.
    """
    kind = _get(spec, "kind")
    if kind not in EVAL_KINDS:
        raise ValueError(f"evals.{name}.kind={kind!r}; expected one of {EVAL_KINDS}")
    return contrastive_load_eval_set(name, spec)


def grl_forward(params: Any, model: Any, batch: dict[str, Any], pooling: str = "mean"
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The model outputs GRL's loss (:func:`jaxbert.objectives.grl.grl_loss`) reads: ``(q [b, e], d [b, c, e],
    gen_logits [b, c, lg, vocab])``.

    ``batch``: ``q_ids, q_mask [b, lq]`` (optional ``q_embed_mask``), ``d_ids, d_mask [b, c, ld]``
    (optional ``d_embed_mask``), pooled in bidirectional mode; ``gen_ids, gen_mask [b, c, lg]`` run
    in causal mode.
    """
    b, c, ld = batch["d_ids"].shape

    def embed(ids, mask, embed_mask=None):
        out = model.apply({"params": params}, ids, mask, attention_mode="bidirectional")
        return llm_pool(out.last_hidden_state, mask, pooling, embed_mask)

    q = embed(batch["q_ids"], batch["q_mask"], batch.get("q_embed_mask"))
    d_embed = batch.get("d_embed_mask")
    d = embed(batch["d_ids"].reshape(b * c, ld), batch["d_mask"].reshape(b * c, ld),
              None if d_embed is None else d_embed.reshape(b * c, ld)).reshape(b, c, -1)
    lg = batch["gen_ids"].shape[-1]
    out = model.apply({"params": params}, batch["gen_ids"].reshape(b * c, lg), batch["gen_mask"].reshape(b * c, lg),
                      attention_mode="causal", return_logits=True)
    return q, d, out.logits.reshape(b, c, lg, -1)


class _Head:
    """The first ``n`` records of a source (``len`` / ``[i]`` / ``describe`` like :class:`JsonlSource`)."""

    def __init__(self, source: Any, n: int):
        self.source, self.n = source, min(n, len(source))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.source[i]

    def describe(self, i: int) -> str:
        return self.source.describe(i)

    def __repr__(self) -> str:
        return f"{self.source!r}[:{self.n}]"


@register("llm_embedding")
class LlmEmbeddingTask(Task):
    """Train a decoder LLM as a text embedder (see the module docstring)."""

    def __init__(self, config: Any):
        from jaxbert.models.llm.model import ATTENTION_MODES

        self.config = config
        lc = config.llm
        self.lc = lc
        self.objective = lc.objective
        if self.objective not in OBJECTIVES:
            raise ValueError(f"llm.objective={self.objective!r}; expected one of {OBJECTIVES}")
        self.attention_mode = lc.attention_mode
        if self.attention_mode not in ATTENTION_MODES:
            raise ValueError(f"llm.attention_mode={self.attention_mode!r}; expected one of {ATTENTION_MODES}")
        if self.objective in ("mntp", "grl") and self.attention_mode != "bidirectional":
            raise ValueError(f"objective {self.objective!r} trains the bidirectional encoder; "
                             f"llm.attention_mode={self.attention_mode!r} must be 'bidirectional'")
        self.pooling = lc.pooling
        canonical_pooling(self.pooling)  # ValueError listing the valid names
        self.temperature = float(lc.temperature)
        if not self.temperature > 0:
            raise ValueError(f"llm.temperature must be > 0, got {lc.temperature!r}")
        self.num_negatives = int(lc.num_negatives)
        if self.num_negatives < 0:
            raise ValueError(f"llm.num_negatives must be >= 0, got {self.num_negatives}")
        if self.objective == "grl" and self.num_negatives < 1:
            raise ValueError("objective 'grl' scores each query's candidates (positive + hard negatives) with the "
                             "generation head; set llm.num_negatives >= 1 and give records negatives")
        data = config.data
        if not data.get("train"):
            raise ValueError("data.train is required for the llm_embedding task")
        self.max_length = int(data.max_length)
        self.eval_max_length = int(_get(data, "eval_max_length", self.max_length))
        self.grad_accum = int(_get(config, "grad_accum_steps", 1))

        # ---------------------------------------------------------------- records
        src = JsonlSource(os.path.expanduser(data.train), key="data.train")
        limit = _get(lc, "max_train_records")
        if limit is not None:
            if int(limit) < 1:
                raise ValueError(f"llm.max_train_records must be >= 1 or None, got {limit!r}")
            src = _Head(src, int(limit))
        if self.objective == "mntp":
            self.train_texts = self._read_texts(src, data.text_field)
            self.train_source = self.train_texts
        else:
            from jaxbert.data.features.pairs import PairFields, read_pair_records
            neg_field = _get(data, "negative_field") if self.num_negatives else None
            recs = read_pair_records(src, PairFields(anchor=data.anchor_field, positive=data.positive_field,
                                                     negative=neg_field))
            have = recs.num_texts - 2
            if have < self.num_negatives:
                raise ValueError(f"llm.num_negatives={self.num_negatives} but the records of {data.train} have "
                                 f"{have} negative(s) in field {neg_field!r}")
            self.train_tuples = [list(t[:2 + self.num_negatives]) for t in recs.texts]
            self.train_source = self.train_tuples

        # ---------------------------------------------------------------- evaluation sets
        self.eval_sources = {}
        for split in config.eval_splits:
            spec = config.evals.get(split) if hasattr(config, "evals") else None
            if spec is None:
                raise ValueError(f"eval split {split!r} has no section evals.{split} "
                                 f"(known: {sorted(config.evals.keys()) if hasattr(config, 'evals') else []})")
            self.eval_sources[split] = load_eval_set(split, spec)
        self.eval_offsets, off = {}, 0
        for split, s in self.eval_sources.items():
            self.eval_offsets[split] = off
            off += len(s)

        # ---------------------------------------------------------------- model, tokenizer, PEFT
        self._build_model(config)
        from jaxbert.inference.llm_encoder import LlmSentenceEncoder
        add_eos = _get(lc, "add_eos")
        self.train_encoder = LlmSentenceEncoder(self.base_model, None, self.model_config, self.tokenizer,
                                                pooling=self.pooling, max_length=self.max_length, add_eos=add_eos)
        self.eval_encoder = LlmSentenceEncoder(self.base_model, None, self.model_config, self.tokenizer,
                                               pooling=self.pooling, max_length=self.eval_max_length, add_eos=add_eos)
        self.add_eos = self.train_encoder.add_eos
        self.pad_id = self.train_encoder._pad_id
        self.query_instruction = _get(lc, "query_instruction", "") or None
        self.doc_instruction = _get(lc, "doc_instruction", "") or None
        buckets = sorted({int(b) for b in (_get(data, "buckets", ()) or ()) if int(b) < self.max_length}
                         | {self.max_length})
        self.buckets = tuple(buckets) if jax.process_count() == 1 else (self.max_length,)
        self._tokenize_train()
        self._eval_tokens: dict[str, tuple[list[list[int]], np.ndarray]] = {}

    # -------------------------------------------------------------------- records
    @staticmethod
    def _read_texts(src: JsonlSource, field: str) -> list[str]:
        out = []
        for i in range(len(src)):
            r = src[i]
            v = r.get(field)
            if not isinstance(v, str) or not v.strip():
                raise ValueError(f"{src.describe(i)}: field {field!r} must be a non-empty text "
                                 f"(record has {sorted(r)})")
            out.append(v)
        if not out:
            raise ValueError(f"{src!r} has no records")
        return out

    def _vocab_texts(self) -> list[str]:
        texts = list(self.train_texts) if self.objective == "mntp" else [t for row in self.train_tuples for t in row]
        for s in self.eval_sources.values():
            texts.extend(s.texts)
        for ins in (_get(self.lc, "query_instruction"), _get(self.lc, "doc_instruction")):
            if ins:
                texts.append(ins)
        return texts

    # -------------------------------------------------------------------- model
    def _build_model(self, config: Any) -> None:
        from jaxbert.models.llm.hf import load_llm_tokenizer

        raw = {k: v for k, v in dict(config.model.overrides or {}).items() if v is not None}
        bad = sorted(set(raw) - set(LLM_OVERRIDES))
        if bad:
            raise ValueError(f"model.overrides {bad} do not apply to LLM models; they take {list(LLM_OVERRIDES)}")
        overrides = {**raw, "attention_mode": self.attention_mode}
        tok_spec = config.data.get("tokenizer")
        if config.model.init_from:
            if tok_spec == "words":
                raise ValueError("data.tokenizer='words' builds a tokenizer for a randomly initialised model; "
                                 f"model.init_from={config.model.init_from!r} brings its own (set data.tokenizer=None)")
            pre = self.load_model(config, "llm", overrides=overrides)
            self.model_path = pre.model_dir
            cfg, params = pre.config, pre.params
            self.tokenizer = load_llm_tokenizer(self.model_path, cfg,
                                                resolve_model_path(tok_spec) if tok_spec else None)
        else:
            self.model_path = None
            params = None
            if not tok_spec:
                raise ValueError("data.tokenizer is required when model.init_from is None (a directory, "
                                 "'asset:NAME', or 'words' for a word-level tokenizer built from the data)")
            if tok_spec == "words":
                n = int(self.lc.word_vocab_size)
                self.tokenizer = build_word_tokenizer(self._vocab_texts(), max_words=n)
                vocab = -(-len(self.tokenizer) // 64) * 64
                cfg = self.load_model(config, "llm", overrides={**overrides, "vocab_size": vocab, "pad_token_id": 0,
                                                                "bos_token_id": 1, "eos_token_id": 2}).config
            else:
                cfg = self.load_model(config, "llm", overrides=overrides).config
                path = resolve_model_path(tok_spec)
                self.tokenizer = load_llm_tokenizer(path, cfg, path)
        if max(self.max_length, self.eval_max_length) > cfg.max_position_embeddings:
            raise ValueError(f"data.max_length={self.max_length} / eval_max_length={self.eval_max_length} exceed "
                             f"the model's max_position_embeddings={cfg.max_position_embeddings}")
        from jaxbert.models.llm.model import LlmModel
        self.model_config = cfg
        L = self.max_length
        self.sample_input = {"input_ids": np.zeros((1, L), np.int32), "attention_mask": np.ones((1, L), np.int32)}
        self.model, self.pretrained_params = LlmModel(cfg), params
        self.attach_peft(config)
        self.mask_token_id = mntp_lib.default_mask_token_id(self.tokenizer)
        # random replacements of MNTP come from the tokenizer's ids (an embedding table padded to a
        # multiple of 64 has rows no text ever uses)
        self.random_vocab = min(len(self.tokenizer), cfg.vocab_size)

    # -------------------------------------------------------------------- tokenization
    def _tokenize_train(self) -> None:
        enc = self.train_encoder
        if self.objective == "mntp":
            self.train_ids, _ = enc.tokenize_with_lengths(self.train_texts)
            self.special_ids = tuple(int(i) for i in self.tokenizer.all_special_ids)
            return
        k = len(self.train_tuples[0])
        queries = [row[0] for row in self.train_tuples]
        docs = [t for row in self.train_tuples for t in row[1:]]
        q_ids, q_skip = enc.tokenize_with_lengths(queries, self.query_instruction)
        d_ids, d_skip = enc.tokenize_with_lengths(docs, self.doc_instruction)
        self.train_ids = [[q_ids[i]] + d_ids[i * (k - 1):(i + 1) * (k - 1)] for i in range(len(queries))]
        self.train_skip = [[int(q_skip[i])] + [int(s) for s in d_skip[i * (k - 1):(i + 1) * (k - 1)]]
                           for i in range(len(queries))]
        if self.objective == "grl":
            g = self.lc.grl
            tok = self.tokenizer
            self.gen_prefix = [t for t in tok("", add_special_tokens=True)["input_ids"] if t != tok.eos_token_id]
            self.gen_length = int(g.max_gen_length)
            self.max_query_tokens = int(g.max_query_tokens)
            if self.gen_length < len(self.gen_prefix) + self.max_query_tokens + 1:
                raise ValueError(f"llm.grl.max_gen_length={self.gen_length} leaves no room for a passage after "
                                 f"{len(self.gen_prefix)} prefix and llm.grl.max_query_tokens={self.max_query_tokens}")
            self.gen_q = tok(queries, add_special_tokens=False)["input_ids"]
            self.gen_d = tok(docs, add_special_tokens=False)["input_ids"]
            self.gen_buckets = tuple(sorted({b for b in self.buckets if b < self.gen_length} | {self.gen_length}))

    def _eval_texts(self, split: str) -> tuple[list[list[int]], np.ndarray]:
        """Token ids and pooled-prefix lengths of a set's texts (queries carry the query instruction)."""
        if split not in self._eval_tokens:
            s, enc = self.eval_sources[split], self.eval_encoder
            if isinstance(s, retrieval_eval.RetrievalSet):
                q, qs = enc.tokenize_with_lengths(list(s.queries), self.query_instruction)
                d, ds = enc.tokenize_with_lengths(list(s.docs), self.doc_instruction)
                self._eval_tokens[split] = (q + d, np.concatenate([qs, ds]))
            else:
                self._eval_tokens[split] = enc.tokenize_with_lengths(list(s.texts), self.doc_instruction)
        return self._eval_tokens[split]

    # -------------------------------------------------------------------- data
    def _mntp_batch(self, idx: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        m = self.lc.mntp
        seqs = [self.train_ids[i] for i in idx]
        ids, mask, _ = pad_rows(seqs, bucket_for(max(map(len, seqs)), self.buckets), self.pad_id)
        x, labels = mntp_lib.mntp_mask(rng, ids, mask, mask_token_id=self.mask_token_id, vocab_size=self.random_vocab,
                                       mask_prob=float(m.mask_prob), replace_prob=float(m.replace_prob),
                                       random_prob=float(m.random_prob), special_ids=self.special_ids)
        return {"input_ids": x, "attention_mask": mask, "labels": labels}

    def _tuple_batch(self, idx: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        k = len(self.train_ids[0])
        seqs = [s for i in idx for s in self.train_ids[i]]
        skip = [s for i in idx for s in self.train_skip[i]]
        ids, mask, embed = pad_rows(seqs, bucket_for(max(map(len, seqs)), self.buckets), self.pad_id, skip)
        b = len(idx)
        batch = {"input_ids": ids.reshape(b, k, -1), "attention_mask": mask.reshape(b, k, -1),
                 "embed_mask": embed.reshape(b, k, -1)}
        if self.objective == "grl":
            batch.update(self._gen_rows(idx, k - 1))
        return batch

    def _gen_rows(self, idx: np.ndarray, c: int) -> dict[str, np.ndarray]:
        """Query then candidate, per candidate: ``gen_ids / gen_mask / gen_target [b, c, Lg]``."""
        rows, spans = [], []
        for i in idx:
            q = self.gen_prefix + self.gen_q[i][:self.max_query_tokens]
            for j in range(c):
                d = self.gen_d[i * c + j][:self.gen_length - len(q)]
                rows.append(q + d)
                spans.append((len(q), len(q) + len(d)))
        ids, mask, _ = pad_rows(rows, bucket_for(max(map(len, rows)), self.gen_buckets), self.pad_id)
        target = np.zeros_like(mask)
        for r, (a, e) in enumerate(spans):
            target[r, a:e] = 1
        b = len(idx)
        return {"gen_ids": ids.reshape(b, c, -1), "gen_mask": mask.reshape(b, c, -1),
                "gen_target": target.reshape(b, c, -1)}

    def train_iterator(self, batch_size: int, seed: int) -> IndexedBatchIterator:
        make = self._mntp_batch if self.objective == "mntp" else self._tuple_batch
        spec = {"task": self.name, "objective": self.objective, "buckets": list(self.buckets),
                "max_length": self.max_length, "num_negatives": self.num_negatives}
        return IndexedBatchIterator(len(self.train_source), batch_size, seed, make, spec=spec)

    def eval_batches(self, split: str, batch_size: int):
        """The set's texts as ``[B, L]`` batches (longest first) with ``embed_mask``, ``index`` and ``weights``."""
        ids, skip = self._eval_texts(split)
        order = np.argsort([-len(t) for t in ids], kind="stable")
        offset = self.eval_offsets[split]
        pc, pi = jax.process_count(), jax.process_index()
        per_host = batch_size // pc
        eval_buckets = tuple(_get(self.config.data, "eval_buckets", EVAL_BUCKETS))  # (): eval_max_length only
        buckets = sorted({int(b) for b in eval_buckets if b < self.eval_max_length} | {self.eval_max_length})
        for start in range(0, len(ids), batch_size):
            sel = order[start:start + batch_size]
            rows = [ids[i] for i in sel] + [[self.pad_id]] * (batch_size - len(sel))  # pad rows: one token
            skips = [int(skip[i]) for i in sel] + [0] * (batch_size - len(sel))
            x, mask, embed = pad_rows(rows, bucket_for(max(map(len, rows)), buckets), self.pad_id, skips)
            index = np.full((batch_size,), -1, np.int32)
            index[:len(sel)] = offset + sel
            batch = {"input_ids": x, "attention_mask": mask, "embed_mask": embed, "index": index,
                     "weights": (index >= 0).astype(np.float32)}
            yield {k: v[pi * per_host:(pi + 1) * per_host] for k, v in batch.items()}

    # -------------------------------------------------------------------- model
    def _embed(self, params, ids, mask, embed_mask, rng, deterministic: bool) -> jax.Array:
        """``ids / mask / embed_mask [n, L]`` -> pooled float32 ``[n, hidden]`` in ``llm.attention_mode``."""
        rngs = None if deterministic or rng is None else {"dropout": rng}
        out = self.model.apply({"params": params}, ids, mask, attention_mode=self.attention_mode,
                               deterministic=deterministic if rngs is not None else True, rngs=rngs)
        return llm_pool(out.last_hidden_state, mask, self.pooling, embed_mask)

    def _scale_extras(self, metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
        # The loop sums metric values over micro-batches and divides only loss / accuracy by the
        # weight: dividing the other means by the number of micro-batches makes their sum a mean.
        return {k: jnp.asarray(v, jnp.float32) / self.grad_accum for k, v in metrics.items()}

    def loss_fn(self, params, batch, rng, deterministic: bool = False):
        """The objective's loss; ``sums`` holds ``loss``/``accuracy`` numerators, ``weight`` and mean extras."""
        if self.objective == "mntp":
            rngs = None if deterministic or rng is None else {"dropout": rng}
            out = self.model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                                   attention_mode="bidirectional", deterministic=rngs is None, return_logits=True,
                                   rngs=rngs or {})
            loss, m = mntp_lib.mntp_loss(out.logits, batch["labels"])
            n = m["num_masked"].astype(jnp.float32)
            return loss, {"loss": loss * n, "accuracy": m["accuracy"] * n, "weight": n}
        ids, mask, embed = batch["input_ids"], batch["attention_mask"], batch["embed_mask"]
        b, k, _ = ids.shape
        lc = self.lc
        if self.objective == "grl":
            g = lc.grl
            gb = {"q_ids": ids[:, 0], "q_mask": mask[:, 0], "q_embed_mask": embed[:, 0],
                  "d_ids": ids[:, 1:], "d_mask": mask[:, 1:], "d_embed_mask": embed[:, 1:],
                  "gen_ids": batch["gen_ids"], "gen_mask": batch["gen_mask"], "gen_target": batch["gen_target"]}
            kl_t = _get(g, "kl_temperature")
            loss, m = grl_lib.grl_loss(*grl_forward(params, self.model, gb, self.pooling), gb["gen_ids"],
                                       gb["gen_target"], temperature=self.temperature,
                                       kl_temperature=None if kl_t is None else float(kl_t),
                                       gen_weight=float(g.gen_weight), kl_weight=float(g.kl_weight),
                                       kl_gradient=bool(g.kl_gradient), gen_gradient=bool(g.gen_gradient),
                                       focal_gamma=float(lc.focal_gamma))
            acc = m.pop("dual_accuracy")
            m.pop("loss")
        else:
            emb = self._embed(params, ids.reshape(b * k, -1), mask.reshape(b * k, -1), embed.reshape(b * k, -1),
                              rng, deterministic).reshape(b, k, -1)
            q, pos = emb[:, 0], emb[:, 1]
            hard = emb[:, 2:] if k > 2 else None
            extra = None
            mix = lc.mix
            if int(mix.num_synthetic) or int(mix.num_query_mixed):
                # pool: each query's hard negatives, or (none given) the other queries' positives
                pool = hard if hard is not None else pos[(jnp.arange(b)[:, None] + 1 + jnp.arange(b - 1)) % b]
                extra = mix_hard_negatives(jax.random.fold_in(rng if rng is not None else jax.random.key(0), 0x313),
                                           q, pool, num_synthetic=int(mix.num_synthetic),
                                           top_k=min(int(mix.top_k), pool.shape[1]),
                                           num_query_mixed=int(mix.num_query_mixed),
                                           max_query_mix=float(mix.max_query_mix))
            loss, m = contrastive_loss(q, pos, hard, temperature=self.temperature, focal_gamma=float(lc.focal_gamma),
                                       extra_negatives=extra, in_batch=bool(lc.in_batch))
            acc = jnp.mean(jnp.argmax(normalize(q) @ normalize(pos).T, axis=-1) == jnp.arange(b))
        w = jnp.asarray(b, jnp.float32)
        return loss, {"loss": loss * w, "accuracy": acc * w, "weight": w, **self._scale_extras(m)}

    def predict_fn(self, params, batch):
        emb = self._embed(params, batch["input_ids"], batch["attention_mask"], batch["embed_mask"], None, True)
        return {"embeddings": normalize(emb), "index": batch["index"]}, {"weight": jnp.sum(batch["weights"])}

    def metric_names(self, split: str) -> frozenset[str]:
        return eval_set_metric_names(self.eval_sources[split])

    def known_splits(self) -> frozenset[str]:
        """The eval sets of ``evals`` (any of them may be left out of ``eval_splits``)."""
        evals = self.config.get("evals") if hasattr(self.config, "get") else None
        return frozenset(tuple(self.config.get("eval_splits") or ()) + tuple(evals.keys() if evals else ()))

    def eval_metrics(self, outputs: dict[str, np.ndarray], sums: dict[str, float]) -> dict[str, float]:
        return embedding_eval_metrics(outputs, self.eval_offsets, self.eval_sources)

    # -------------------------------------------------------------------- persistence
    def embedding_settings(self) -> dict[str, Any]:
        """What the export records under :data:`EMBEDDING_KEY` in ``config.json``."""
        return {"pooling": self.pooling, "attention_mode": self.attention_mode, "add_eos": self.add_eos,
                "max_length": self.eval_max_length, "query_instruction": self.query_instruction or "",
                "doc_instruction": self.doc_instruction or "", "normalize": True, "objective": self.objective}

    def encoder(self, params) -> Any:
        """An in-memory :class:`~jaxbert.inference.llm_encoder.LlmSentenceEncoder` over ``params`` (normalised outputs)."""
        from jaxbert.inference.llm_encoder import LlmSentenceEncoder
        return LlmSentenceEncoder(self.base_model, jax.tree.map(jnp.asarray, self.merged_params(params)),
                                  self.model_config, self.tokenizer, pooling=self.pooling, normalize=True,
                                  max_length=self.eval_max_length, add_eos=self.add_eos)

    def extra_state(self) -> dict[str, Any]:
        return {"objective": self.objective, "pooling": self.pooling, "attention_mode": self.attention_mode,
                "tokenizer_size": len(self.tokenizer)}

    def write_export(self, params, path: str | os.PathLike) -> Path:
        """HF Llama/Qwen2 directory + tokenizer + embedding settings (see the module docstring)."""
        from jaxbert.convert.hf import save_pretrained
        return save_pretrained(path, params, self.model_config, tokenizer=self.tokenizer,  # one atomic swap
                               extra_config={EMBEDDING_KEY: self.embedding_settings()})
