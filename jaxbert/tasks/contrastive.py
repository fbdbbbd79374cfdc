"""Sentence-embedding training as a task for the training loop: pairs -> bi-encoder -> contrastive
or scored-pair loss; retrieval / similarity evaluation; sentence-transformers export.

Config keys read (see ``experiments/configs/sentence_embedding.py``)::

    model.init_from / model.preset / model.overrides     as the classification task
    data.train                 JSONL of pairs (jaxbert/data/features/pairs.py)
    data.anchor_field, positive_field, negative_field, score_field, label_field, domain_field,
    data.teacher_field         record field names
    data.teacher_dir           DSE: a cross-encoder (HF sequence-classification dir) that scores
                               data.train before training (cached; see teacher_scored_pairs);
                               unset / "": data.train already holds the teacher logits
    data.teacher_max_length    DSE: the teacher's (query, pair) truncation length (default 128)
    data.max_length, data.buckets, data.eval_max_length
    contrastive.objective      mnrl | ntxent | cosent | cosine | softmax | dse
    contrastive.scale          MNRL / CoSENT / NT-Xent logit scale (1 / temperature)
    contrastive.directions, contrastive.partition_mode   MNRL variants (sentence-transformers names)
    contrastive.hardness_mode, hardness_strength         MNRL hardness weighting of negatives
    contrastive.matryoshka_dims, matryoshka_weights      () = off
    contrastive.grad_cache_chunk   rows (pairs) per GradCache chunk; 0 = off
    contrastive.gather         "global" (jit over the global batch: XLA gathers) | "shard_map"
    contrastive.pooling        pooling mode(s); None = the model directory's, else "mean"
    contrastive.normalize      export with a Normalize module
    contrastive.mirror_span    > 0: Mirror-BERT (identity pairs, span masking of the 2nd view)
    contrastive.labels, pair_features, dse_alpha                     softmax / DSE heads
    contrastive.domains, contrastive.moe.*                            mixture-of-experts embedder
    evals.<name>               evaluation sets (kind: retrieval | lee | word_similarity | pairs | probe)
    eval_splits                which of ``evals`` to run

Batches hold ``[B, K, L]`` token arrays (anchor, positive, negatives); each row's texts are
embedded together and the loss sees the whole global batch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbert.compiler_options import compiler_options
from jaxbert.data.batching import bucket_length
from jaxbert.data.features.pairs import PairFields, make_pair_iterator, read_pair_records
from jaxbert.data.labels import LabelMap
from jaxbert.data.sources import JsonlSource
from jaxbert.data.tokenization import encode_batch, load_tokenizer
from jaxbert.eval import retrieval as retrieval_eval
from jaxbert.models.embedder import SentenceEmbedder
from jaxbert.objectives import contrastive as closs
from jaxbert.tasks.base import Task, register, resolve_model_path

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OBJECTIVES = ("mnrl", "ntxent", "cosent", "cosine", "softmax", "dse")
EVAL_KINDS = ("retrieval", "lee", "word_similarity", "pairs", "probe")
EVAL_BUCKETS = (16, 32, 64, 128, 256, 512)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    try:
        value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    except (AttributeError, KeyError):
        return default
    return default if value is None else value


def load_eval_set(name: str, spec: Any):
    """An evaluation set from its config section (``kind`` + paths); errors name the set."""
    kind = _get(spec, "kind")
    if kind not in EVAL_KINDS:
        raise ValueError(f"evals.{name}.kind={kind!r}; expected one of {EVAL_KINDS}")
    if kind == "retrieval":
        return retrieval_eval.load_retrieval_set(
            os.path.expanduser(spec.queries), os.path.expanduser(spec.corpus), os.path.expanduser(spec.qrels),
            corpus_limit=_get(spec, "corpus_limit"), query_limit=_get(spec, "query_limit"), name=name)
    if kind == "lee":
        return retrieval_eval.load_lee(os.path.expanduser(spec.path))
    if kind == "word_similarity":
        return retrieval_eval.load_word_similarity(os.path.expanduser(spec.path))
    if kind == "probe":
        return retrieval_eval.load_probe_set(
            os.path.expanduser(spec.train), os.path.expanduser(spec.test), text_field=_get(spec, "text_field", "text"),
            label_field=_get(spec, "label_field", "label"), train_limit=_get(spec, "train_limit"),
            test_limit=_get(spec, "test_limit"), name=name)
    # "pairs": JSONL with two text fields and a score (STS-style)
    src = JsonlSource(os.path.expanduser(spec.path))
    f1, f2, fs = _get(spec, "text1", "anchor"), _get(spec, "text2", "positive"), _get(spec, "score", "score")
    texts: dict[str, int] = {}
    pairs, scores = [], []
    for i in range(len(src)):
        r = src[i]
        for f in (f1, f2, fs):
            if f not in r:
                raise ValueError(f"{src.describe(i)}: no field {f!r} (record has {sorted(r)})")
        for f in (f1, f2):
            if not isinstance(r[f], str):
                raise TypeError(f"{src.describe(i)}: field {f!r} must be a str, got {type(r[f]).__name__}")
        pairs.append((texts.setdefault(r[f1], len(texts)), texts.setdefault(r[f2], len(texts))))
        scores.append(float(r[fs]))
    return retrieval_eval.SimilaritySet(list(texts), np.asarray(pairs), np.asarray(scores), name=name)


def embedding_eval_metrics(outputs: dict[str, np.ndarray], offsets: dict[str, int],
                           sources: dict[str, Any]) -> dict[str, float]:
    """Metrics of one eval set from its texts' embeddings.

    ``outputs["index"] [n]`` holds each row's global text index (``-1`` for padding rows) and
    ``outputs["embeddings"] [n, d]`` the embeddings; the set is the one whose index range
    ``[offsets[split], offsets[split] + len(sources[split]))`` holds the rows. The embeddings are
    put back in the set's text order and scored by ``sources[split].metrics``.
    """
    idx = np.asarray(outputs["index"])
    rows = np.flatnonzero(idx >= 0)
    if not len(rows):
        raise ValueError("evaluation outputs hold no real rows")
    first = int(idx[rows[0]])
    for split, off in offsets.items():
        s = sources[split]
        if off <= first < off + len(s):
            emb = np.zeros((len(s), outputs["embeddings"].shape[-1]), np.float32)
            emb[idx[rows] - off] = outputs["embeddings"][rows]
            metrics = s.metrics(emb)
            metrics["num_texts"] = len(rows)
            return metrics
    raise ValueError(f"eval row index {first} belongs to no eval set")


def eval_set_metric_names(s: Any) -> frozenset[str]:
    """Names :func:`embedding_eval_metrics` reports for the eval set ``s`` (retrieval, similarity or probe)."""
    if isinstance(s, retrieval_eval.RetrievalSet):
        names = {f"ndcg@{k}" for k in s.ndcg_k} | {f"mrr@{k}" for k in s.mrr_k} | {f"recall@{k}" for k in s.recall_k}
        names.add("num_queries")
    elif isinstance(s, retrieval_eval.SimilaritySet):
        names = {"spearman", "pearson", "num_pairs"}
    elif isinstance(s, retrieval_eval.ProbeSet):
        names = {"accuracy", "macro_f1"} | ({"f1"} if s.num_classes == 2 else set())
    else:
        raise NotImplementedError(f"no metric names known for eval set type {type(s).__name__}")
    return frozenset(names | {"num_texts"})


@register("contrastive")
class ContrastiveTask(Task):
    """Bi-encoder training on pairs (see the module docstring)."""

    def __init__(self, config: Any):
        self.config = config
        cc = config.contrastive
        self.cc = cc
        self.objective = cc.objective
        if self.objective not in OBJECTIVES:
            raise ValueError(f"contrastive.objective={self.objective!r}; expected one of {OBJECTIVES}")
        self.directions = closs.check_mnrl_options(float(cc.scale), tuple(cc.directions), cc.partition_mode,
                                                   _get(cc, "hardness_mode") or None,
                                                   float(_get(cc, "hardness_strength", 0.0)))
        self.matryoshka = tuple(int(d) for d in (cc.matryoshka_dims or ()))
        if self.matryoshka and self.objective in ("softmax", "dse"):
            raise ValueError(f"Matryoshka truncation cannot feed the {self.objective!r} classifier "
                             "(its input size is fixed); use it with mnrl, ntxent, cosent or cosine")
        if cc.gather not in ("global", "shard_map"):
            raise ValueError(f"contrastive.gather={cc.gather!r}; expected 'global' or 'shard_map'")
        if cc.gather == "shard_map" and self.objective != "mnrl":
            raise ValueError("contrastive.gather='shard_map' is implemented for objective 'mnrl'")
        data = config.data
        if not data.train:
            raise ValueError("data.train is required for the contrastive task")
        self.mirror_span = int(_get(cc, "mirror_span", 0))
        if self.mirror_span and self.objective != "ntxent":
            raise ValueError("Mirror-BERT (contrastive.mirror_span > 0) trains with objective 'ntxent'")
        self.label_map = None
        if self.objective in ("softmax", "dse") and _get(cc, "labels"):
            self.label_map = LabelMap(data.label_field, list(cc.labels))
        if self.objective == "softmax" and self.label_map is None:
            raise ValueError("objective 'softmax' needs contrastive.labels (the class names, in id order)")
        self.domains = tuple(_get(cc, "domains", ()) or ())
        self.train_path = os.path.expanduser(data.train)
        teacher_dir = _get(data, "teacher_dir")
        if teacher_dir:
            if self.objective != "dse":
                raise ValueError(f"data.teacher_dir={teacher_dir!r} is for objective 'dse' (teacher-scored pairs), "
                                 f"not {self.objective!r}; unset it")
            self.train_path = str(teacher_scored_pairs(
                self.train_path, teacher_dir, text_field=data.anchor_field, pair_field=data.positive_field,
                teacher_field=_get(data, "teacher_field", "teacher"),
                max_length=int(_get(data, "teacher_max_length", 128))))
        fields = PairFields(anchor=data.anchor_field, positive=data.positive_field, negative=data.negative_field,
                            score=_get(data, "score_field"), label=data.label_field,
                            domain=_get(data, "domain_field") if self.domains else None,
                            teacher=_get(data, "teacher_field"))
        # Mirror-BERT identity pairs: span masking asked for, or NT-Xent on records without a positive.
        mirror = self.mirror_span > 0 or (self.objective == "ntxent" and not _get(data, "positive_field"))
        self.train_source = read_pair_records(
            JsonlSource(self.train_path), fields, mirror=mirror, label_map=self.label_map,
            domains=self.domains or None, require_score=self.objective in ("cosent", "cosine"),
            require_label=self.objective == "softmax" or (self.objective == "dse" and self.label_map is not None
                                                          and float(cc.dse_alpha) < 1.0),
            require_teacher=self.objective == "dse")
        if self.objective in ("cosent", "cosine", "softmax", "dse", "ntxent") and self.train_source.num_texts != 2:
            raise ValueError(f"objective {self.objective!r} takes exactly two texts per record, got "
                             f"{self.train_source.num_texts} (negatives are for mnrl)")
        self._build_model(config)
        if self.objective == "dse":
            width, outputs = self.train_source.teacher.shape[1], self.model.num_labels
            if width != outputs:
                raise ValueError(
                    f"{self.train_path}: {width} teacher logits per pair, but the student's pair head has {outputs} "
                    "outputs (contrastive.labels, or contrastive.num_teacher_logits without labels); they must match")
        self.max_length = int(data.max_length)
        self.eval_max_length = int(_get(data, "eval_max_length", self.max_length))
        self.sample_input = {k: np.zeros((1, self.max_length), np.int32) for k in MODEL_INPUTS}
        if self.domains:
            self.sample_input["domains"] = np.zeros((1,), np.int32)
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
        self.attach_peft(config)

    def check_peft(self, method) -> None:
        """Soft prompts are refused (the pooling reads the un-prompted mask); the MoE blocks have the extension sites."""
        from jaxbert.peft import PeftError
        super().check_peft(method)
        exts = tuple(method.extensions())
        if any(e.site == "embeddings" for e in exts):
            raise PeftError(f"task 'contrastive': peft.method={method.name!r} inserts soft-prompt tokens, which the "
                            "sentence pooling (over the input's attention mask) cannot see; use lora, an adapter, "
                            "prefix, bitfit, lightweight, dsee or hft")

    # -------------------------------------------------------------------- model
    def _build_model(self, config: Any) -> None:
        cc = config.contrastive
        pooling = _get(cc, "pooling")
        normalize = _get(cc, "normalize", True)
        hf_dir = None
        if config.model.init_from:
            hf_dir = resolve_model_path(config.model.init_from)
            if (hf_dir / "modules.json").is_file():  # a sentence-transformers directory
                from jaxbert.models.pooling import read_st_pooling, st_transformer_dir
                if pooling is None:
                    pooling = read_st_pooling(hf_dir)[0]
                hf_dir = st_transformer_dir(hf_dir)
        loaded = self.load_model(config, "base", model_dir=hf_dir)
        self.model_dir = resolve_model_path(config.model.init_from) if config.model.init_from else None
        cfg, backbone, encoder_params = loaded.config, loaded.backbone, loaded.params
        self.tokenizer = self.load_task_tokenizer(config, hf_dir, cfg.vocab_size)
        self.pooling = tuple([pooling] if isinstance(pooling, str) else (pooling or ("mean",)))
        self.normalize = bool(normalize)
        num_labels = 0
        if self.objective in ("softmax", "dse"):
            num_labels = (self.label_map.num_classes if self.label_map is not None
                          else int(cc.get("num_teacher_logits", 1)))
        moe = _get(cc, "moe")
        if self.domains:
            from jaxbert.models import moe_embedder
            backbone, cfg, encoder_params = moe_embedder.moe_backbone(
                cfg, encoder_params, num_experts=len(self.domains), layers=tuple(_get(moe, "layers", ()) or ()),
                router=_get(moe, "router", "learned"), router_loss_weight=float(_get(moe, "router_loss_weight", 0.1)),
                seed=config.seed)
        self.model_config = cfg
        self.model = SentenceEmbedder(cfg, backbone, self.pooling, num_labels,
                                      tuple(_get(cc, "pair_features", ("u", "v", "abs_diff"))))
        if encoder_params is None:
            self.pretrained_params = None
        elif not num_labels and not self.domains:  # the backbone is the whole model: no init needed
            self.pretrained_params = {"encoder": encoder_params}
        else:
            from flax import linen as nn
            sample = {k: np.zeros((1, 8), np.int32) for k in MODEL_INPUTS}
            if self.domains:
                sample["domains"] = np.zeros((1,), np.int32)
            fresh = nn.unbox(jax.jit(lambda r: self.model.init(r, **sample))(jax.random.key(config.seed))["params"])
            fresh["encoder"] = encoder_params
            self.pretrained_params = fresh

    def _embed(self, params, inputs: dict, rng, deterministic: bool) -> jax.Array:
        """``inputs``: ``[n, K, L]`` token arrays (+ ``domains [n]``) -> ``[n, K, dim]`` pooled vectors."""
        n, k, l = inputs["input_ids"].shape
        flat = [inputs[key].reshape(n * k, l) for key in MODEL_INPUTS]
        kwargs = {}
        if "domains" in inputs:
            kwargs["domains"] = jnp.repeat(inputs["domains"], k)
        rngs = None if deterministic else {"dropout": rng}
        emb = self.model.apply({"params": params}, *flat, deterministic=deterministic, rngs=rngs, **kwargs)
        return emb.reshape(n, k, -1)

    def embed_batch(self, params, batch: dict, rng, deterministic: bool) -> jax.Array:
        """``[B, K, dim]`` embeddings of a batch, through GradCache when ``grad_cache_chunk`` is set."""
        inputs = {key: batch[key] for key in MODEL_INPUTS}
        if "domains" in batch and self.domains:
            inputs["domains"] = batch["domains"]
        b = inputs["input_ids"].shape[0]
        chunk = int(_get(self.cc, "grad_cache_chunk", 0))
        if chunk and chunk < b:
            if b % chunk:
                raise ValueError(f"batch of {b} rows is not divisible by contrastive.grad_cache_chunk={chunk}")
            rng = jax.random.key(0) if rng is None else rng
            embed_fn = lambda p, x, r: self._embed(p, x, r, deterministic)  # noqa: E731
            return closs.grad_cache_embed(embed_fn, params, inputs, rng, b // chunk)
        return self._embed(params, inputs, rng, deterministic)

    def _pair_logits(self, params, u, v):
        return self.model.apply({"params": params}, u, v, method=SentenceEmbedder.pair_logits)

    def objective_loss(self, params, emb: jax.Array, batch: dict):
        """The configured loss of ``emb [B, K, dim]`` (Matryoshka-wrapped when dims are set)."""
        cc, obj = self.cc, self.objective
        scale = float(cc.scale)
        if obj == "mnrl":
            kw = dict(scale=scale, directions=self.directions, partition_mode=cc.partition_mode,
                      hardness_mode=_get(cc, "hardness_mode") or None,
                      hardness_strength=float(_get(cc, "hardness_strength", 0.0)))
            mnrl = closs.gathered_mnrl_loss if cc.gather == "shard_map" else closs.mnrl_loss
            fn = lambda q, d: mnrl(q, d, **kw)  # noqa: E731
            args = (emb[:, 0], emb[:, 1:])
        elif obj == "ntxent":
            fn, args = (lambda a, b: closs.ntxent_loss(a, b, scale=scale)), (emb[:, 0], emb[:, 1])
        elif obj == "cosent":
            fn, args = (lambda a, b: closs.cosent_loss(a, b, batch["scores"], scale=scale)), (emb[:, 0], emb[:, 1])
        elif obj == "cosine":
            fn, args = (lambda a, b: closs.cosine_similarity_loss(a, b, batch["scores"])), (emb[:, 0], emb[:, 1])
        elif obj == "softmax":
            return closs.softmax_pair_loss(self._pair_logits(params, emb[:, 0], emb[:, 1]), batch["labels"])
        else:  # dse
            logits = self._pair_logits(params, emb[:, 0], emb[:, 1])
            return closs.dse_loss(logits, batch["teacher"], batch.get("labels"), alpha=float(cc.dse_alpha))
        if self.matryoshka:
            weights = tuple(cc.matryoshka_weights) or None
            return closs.matryoshka_loss(fn, args, self.matryoshka, weights)
        return fn(*args)

    def loss_fn(self, params, batch, rng, deterministic: bool = False):
        emb = self.embed_batch(params, batch, rng, deterministic)
        loss, sums = self.objective_loss(params, emb, batch)
        aux = self._router_loss(params, batch, deterministic)
        if aux is not None:
            loss = loss + aux
            sums = dict(sums, loss=sums["loss"] + aux * sums["weight"])
        return loss, sums

    def _router_loss(self, params, batch, deterministic):
        """MoE embedder: cross-entropy of the learned router against the enforced domain."""
        if not self.domains or "domains" not in batch:
            return None
        from jaxbert.models import moe_embedder
        return moe_embedder.router_loss(self.model, params, {k: batch[k] for k in MODEL_INPUTS}, batch["domains"])

    # -------------------------------------------------------------------- data
    def train_iterator(self, batch_size: int, seed: int):
        d = self.config.data
        return make_pair_iterator(self.train_source, self.tokenizer, batch_size=batch_size, seed=seed,
                                  max_length=self.max_length, buckets=d.get("buckets"),
                                  mirror_span=self.mirror_span, spec={"task": self.name, "objective": self.objective})

    def eval_batches(self, split: str, batch_size: int):
        """Single texts of the set as ``[B, 1, L]`` batches (sorted by length), with ``index`` / ``weights``."""
        texts = self.eval_sources[split].texts
        order = np.argsort([-len(t) for t in texts], kind="stable")  # longest first: few padded tokens
        offset = self.eval_offsets[split]
        pc, pi = jax.process_count(), jax.process_index()
        per_host = batch_size // pc
        extra = tuple(self.config.data.get("buckets") or ())  # the training buckets (long-document configs)
        buckets = sorted({b for b in (*EVAL_BUCKETS, *extra) if b < self.eval_max_length} | {self.eval_max_length})
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            enc = encode_batch(self.tokenizer, [texts[i] for i in idx], max_length=self.eval_max_length,
                               pad_to="longest")
            length = bucket_length(enc["input_ids"].shape[1], buckets)
            rows = len(idx)
            batch = {}
            for key in MODEL_INPUTS:
                arr = np.zeros((batch_size, 1, length), np.int32)
                arr[:rows, 0, :enc[key].shape[1]] = enc[key]
                batch[key] = arr
            if self.tokenizer.pad_token_id:
                batch["input_ids"][rows:, 0, :] = self.tokenizer.pad_token_id
            index = np.full((batch_size,), -1, np.int32)
            index[:rows] = offset + idx
            batch["index"] = index
            batch["weights"] = (index >= 0).astype(np.float32)
            if self.domains:
                batch["domains"] = np.full((batch_size,), int(self.cc.get("eval_domain", 0) or 0), np.int32)
            yield {k: v[pi * per_host:(pi + 1) * per_host] for k, v in batch.items()}

    def predict_fn(self, params, batch):
        inputs = {key: batch[key] for key in MODEL_INPUTS}
        if self.domains:
            inputs["domains"] = batch["domains"]
        emb = self._embed(params, inputs, None, True)[:, 0]
        return {"embeddings": closs.l2_normalize(emb), "index": batch["index"]}, {"weight": jnp.sum(batch["weights"])}

    def metric_names(self, split: str) -> frozenset[str]:
        return eval_set_metric_names(self.eval_sources[split])

    def known_splits(self) -> frozenset[str]:
        """The eval sets of ``evals`` (any of them may be left out of ``eval_splits``)."""
        evals = self.config.get("evals") if hasattr(self.config, "get") else None
        return frozenset(tuple(self.config.get("eval_splits") or ()) + tuple(evals.keys() if evals else ()))

    def eval_metrics(self, outputs: dict[str, np.ndarray], sums: dict[str, float]) -> dict[str, float]:
        return embedding_eval_metrics(outputs, self.eval_offsets, self.eval_sources)

    def embed_texts(self, params, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Normalised embeddings of ``texts`` on this host (benchmarks, notebooks)."""
        from jaxbert.eval.retrieval import SimilaritySet
        saved = dict(self.eval_sources), dict(self.eval_offsets)
        self.eval_sources = {"_adhoc": SimilaritySet(list(texts), np.zeros((0, 2), np.int64), np.zeros((0,)))}
        self.eval_offsets = {"_adhoc": 0}
        try:
            if getattr(self, "_jit_predict", None) is None:
                self._jit_predict = jax.jit(self.predict_fn, compiler_options=compiler_options())
            predict = self._jit_predict
            out = np.zeros((len(texts), self.model_config.hidden_size * len(self.pooling)), np.float32)
            for batch in self.eval_batches("_adhoc", batch_size):
                o, _ = predict(params, batch)
                keep = np.asarray(batch["index"]) >= 0
                out[np.asarray(batch["index"])[keep]] = np.asarray(o["embeddings"])[keep]
            return out
        finally:
            self.eval_sources, self.eval_offsets = saved

    # -------------------------------------------------------------------- persistence
    def extra_state(self) -> dict[str, Any]:
        return {"objective": self.objective, "pooling": list(self.pooling),
                "labels": self.label_map.to_dict() if self.label_map is not None else None}

    def write_export(self, params, path: str | os.PathLike) -> Path:
        """A sentence-transformers directory (``SentenceTransformer(path)`` loads it; same embeddings).

        MoE embedders export one dense sentence-transformers model per domain (``path/<domain>``).
        """
        from jaxbert.convert.sentence_transformers import save_sentence_transformer
        if self.domains:
            from jaxbert.convert.atomic_dir import atomic_directory
            from jaxbert.models import moe_embedder
            with atomic_directory(path) as tmp:  # every domain's model appears together, in one swap
                for e, domain in enumerate(self.domains):
                    dense_params, dense_cfg = moe_embedder.expert_as_dense(params["encoder"], self.model_config, e)
                    save_sentence_transformer(tmp / domain, dense_params, dense_cfg, self.tokenizer,
                                              pooling=self.pooling, normalize=self.normalize,
                                              max_seq_length=self.max_length)
            return Path(path)
        return save_sentence_transformer(path, params["encoder"], self.model_config, self.tokenizer,
                                         pooling=self.pooling, normalize=self.normalize,
                                         max_seq_length=self.max_length)


def write_teacher_logits(pairs_path: str | os.PathLike, teacher_dir: str | os.PathLike, out_path: str | os.PathLike,
                         *, text_field: str = "anchor", pair_field: str = "positive", teacher_field: str = "teacher",
                         max_length: int = 128, batch_size: int = 64) -> Path:
    """DSE step 1: score every ``(text, pair)`` record with a cross-encoder teacher (an HF
    sequence-classification directory, e.g. the ``cross_encoder`` config's export) and write the
    records with the teacher's logits in ``teacher_field`` (the student's regression targets)."""
    from jaxbert.data.features.pairs import write_jsonl

    src = JsonlSource(os.path.expanduser(pairs_path))
    pre = Task.load_checkpoint(teacher_dir, "sequence_classification")
    tok = load_tokenizer(teacher_dir)

    @jax.jit
    def logits_fn(p, ids, mask, types):
        return pre.model.apply({"params": p}, ids, mask, types)["logits"].astype(jnp.float32)

    rows = [dict(src[i]) for i in range(len(src))]
    for i, r in enumerate(rows):
        for f in (text_field, pair_field):
            if not isinstance(r.get(f), str) or not r[f].strip():
                raise ValueError(f"{src.describe(i)}: field {f!r} must be a non-empty text")
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        enc = encode_batch(tok, [r[text_field] for r in chunk], [r[pair_field] for r in chunk], max_length=max_length)
        n = len(chunk)
        pad = lambda a: np.pad(a, ((0, batch_size - n), (0, 0)))  # noqa: E731
        logits = np.asarray(logits_fn(pre.params, *(pad(enc[k]) for k in MODEL_INPUTS)))[:n]
        for r, l in zip(chunk, logits):
            r[teacher_field] = [float(x) for x in l]
    return write_jsonl(rows, out_path)


TEACHER_CACHE_VERSION = "dse-teacher-v1"


def teacher_scored_pairs(pairs_path: str | os.PathLike, teacher_dir: str | os.PathLike, *,
                         text_field: str = "anchor", pair_field: str = "positive", teacher_field: str = "teacher",
                         max_length: int = 128, batch_size: int = 64, cache_root: str | os.PathLike | None = None
                         ) -> Path:
    """DSE's teacher step, cached: ``pairs_path`` scored by the cross-encoder in ``teacher_dir``.

    Returns the path of a JSONL file holding every record of ``pairs_path`` plus
    ``teacher_field``: the teacher's ``[num_labels]`` logits for ``(record[text_field],
    record[pair_field])`` (:func:`write_teacher_logits`). The file lives under
    ``<cache_root or $JAXBERT_CACHE>/derived/dse-teacher-v1/`` and is named by a hash of the pair
    file (path, size, mtime), the teacher's weights and config, the field names and
    ``max_length``, so a retrained teacher or an edited pair file is scored again and a rerun
    (or a resumed job) reuses the scores.

    Raises:
      FileNotFoundError: ``teacher_dir`` is not a model directory (no ``config.json`` or no
        weights), naming the directory and the command that trains a teacher.
      ValueError: a record without a non-empty text in ``text_field`` / ``pair_field`` (file and line).
    """
    import hashlib
    import json

    from jaxbert.assets import cache_dir, sha256_of

    pairs = Path(os.path.expanduser(pairs_path)).resolve()
    teacher = Path(os.path.expanduser(teacher_dir))
    weights = sorted(teacher.glob("*.safetensors")) if teacher.is_dir() else []
    if not (teacher / "config.json").is_file() or not weights:
        raise FileNotFoundError(
            f"DSE teacher {str(teacher)!r} is not a model directory (config.json + *.safetensors); train the "
            "cross-encoder first (python -m experiments.launch --config "
            "experiments/configs/sentence_embedding.py:cross_encoder --workdir runs/wordnet_cross) or set "
            "data.teacher_dir to a sequence-classification export")
    if not pairs.is_file():
        raise FileNotFoundError(f"DSE pair file {str(pairs)!r} not found (data.train)")
    digest = hashlib.sha256()
    stat = pairs.stat()
    digest.update(json.dumps([TEACHER_CACHE_VERSION, str(pairs), stat.st_size, stat.st_mtime_ns, text_field,
                              pair_field, teacher_field, int(max_length)]).encode())
    for f in [teacher / "config.json", *weights]:
        digest.update(f.name.encode() + sha256_of(f).encode())
    root = Path(cache_root) if cache_root is not None else cache_dir() / "derived"
    out = root / TEACHER_CACHE_VERSION / f"{pairs.stem}-{digest.hexdigest()[:16]}.jsonl"
    if out.is_file():
        return out
    return write_teacher_logits(pairs, teacher, out, text_field=text_field, pair_field=pair_field,
                                teacher_field=teacher_field, max_length=max_length, batch_size=batch_size)
