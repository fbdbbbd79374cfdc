"""Masked-language-model pretraining (from scratch or continued) as a task for the training loop.

Generic over the registry's backbones: any module that takes BertModel's call signature
(``input_ids, attention_mask, token_type_ids, position_ids, deterministic=``) and provides
``word_embedding_table()`` trains here. Packing additionally needs a ``segment_ids=`` keyword
(BertModel has it); with ``mlm.packing=False`` it is never passed.

Config keys read (defaults in :meth:`MaskedLMTask.config_section`, recipes in
``experiments/configs/pretrain_mlm.py``)::

    model.preset / model.overrides      architecture (vocab_size is set from the tokenizer)
    model.init_from                     continue from an HF directory instead (optional)
    data.train                          JSONL path(s), comma-separated; ``data.text_field`` per record
    data.validation / data.test         optional separate held-out JSONL files
    data.tokenizer                      tokenizer directory; None: train one on the train split
    data.max_length                     row length (tokens, specials included)
    mlm.*                               masking, packing, held-out ids, tokenizer training,
                                        decoder (DrBERT), n-gram (ERNIE-Gram), bprop (B-PROP)

Train metrics: ``loss`` (total objective), ``accuracy`` (MLM top-1 over predicted tokens),
``mlm_loss`` and, when enabled, ``ngram_loss`` / ``rop_loss``. Eval metrics per split:
``loss`` (MLM cross-entropy per predicted token), ``accuracy``, ``perplexity``,
``num_predictions`` (+ ``ngram_loss``/``ngram_accuracy``). The export is an HF
``BertForMaskedLM`` directory (encoder + MLM head + tokenizer; pretraining-only heads dropped)
that ``finetune_classification.py`` loads with ``--config.model.init_from=<export dir>``; for
M2 backbones it is the same directory in the reference's key names (``jaxbert/convert/m2.py``).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

import ml_collections
from ml_collections import config_dict

from jaxbert.convert import hf as hf_convert
from jaxbert.data import masking as masking_lib
from jaxbert.data.features.mlm import build_rows, make_mlm_eval_batches, make_mlm_train_iterator
from jaxbert.data.sources import JsonlSource
from jaxbert.data.tokenization import (check_vocab, load_tokenizer, round_vocab_size, tokenize_with_words,
                                       tokenizer_vocab_size, train_tokenizer)
from jaxbert.models import registry
from jaxbert.models.mlm_decoders import PRETRAINING_ONLY, DecoderConfig, EncoderForPretraining, split_pretraining_params
from jaxbert.objectives.mlm import masked_lm_loss, pairwise_hinge_loss
from jaxbert.tasks.base import Task, model_overrides, register, resolve_model_path

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "segment_ids",
              "masked_positions", "masked_offsets", "ngram_positions")


def _paths(spec: str | None) -> list[str]:
    if not spec:
        return []
    return [os.path.expanduser(p.strip()) for p in str(spec).split(",") if p.strip()]


def load_documents(config: Any) -> dict[str, list[str]]:
    """``{"train": [...], "validation": [...], "test": [...]}`` texts from the data config.

    Records of ``data.train`` whose ``mlm.id_field`` is listed in ``mlm.validation_ids`` /
    ``mlm.test_ids`` go to those splits (Brown's document split); ``data.validation`` /
    ``data.test`` files add whole files. ``mlm.max_documents`` caps the train split.
    """
    d, m = config.data, config.mlm
    field = d.text_field
    held = {"validation": set(m.get("validation_ids") or ()), "test": set(m.get("test_ids") or ())}
    id_field = m.get("id_field")
    if (held["validation"] or held["test"]) and not id_field:
        raise ValueError("mlm.validation_ids / mlm.test_ids need mlm.id_field (the record field holding the id)")
    out: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    seen: dict[str, set] = {"validation": set(), "test": set()}
    train_paths = _paths(d.train)
    if not train_paths:
        raise ValueError("data.train is required for MLM pretraining (JSONL path(s), comma-separated)")
    for path in train_paths:
        src = JsonlSource(path)
        for i in range(len(src)):
            r = src[i]
            if field not in r or not isinstance(r[field], str):
                raise ValueError(f"{src.describe(i)}: no str field {field!r} (record has {sorted(r)})")
            split = "train"
            if id_field:
                if id_field not in r:
                    raise ValueError(f"{src.describe(i)}: no id field {id_field!r} (record has {sorted(r)})")
                for s in ("validation", "test"):
                    if r[id_field] in held[s]:
                        split = s
                        seen[s].add(r[id_field])
            out[split].append(r[field])
    for s in ("validation", "test"):
        missing = held[s] - seen[s]
        if missing:
            raise ValueError(f"mlm.{s}_ids lists {len(missing)} id(s) not found in data.train: {sorted(missing)[:10]}")
        for path in _paths(d.get(s)):
            src = JsonlSource(path)
            for i in range(len(src)):
                r = src[i]
                if field not in r or not isinstance(r[field], str):
                    raise ValueError(f"{src.describe(i)}: no str field {field!r} (record has {sorted(r)})")
                out[s].append(r[field])
    out["train"] = [t for t in out["train"] if t.strip()]
    if m.get("max_documents"):
        out["train"] = out["train"][: int(m.max_documents)]
    if not out["train"]:
        raise ValueError(f"no training text: {train_paths} hold no non-blank {field!r} values outside the held-out ids")
    return out


def _supports_segments(backbone: Any) -> bool:
    try:
        return "segment_ids" in inspect.signature(backbone.__call__).parameters
    except (TypeError, ValueError):
        return False


@register("mlm")
class MaskedLMTask(Task):
    """Builds tokenizer, packed rows, masker, pretraining model and losses for MLM."""

    hf_task = "mlm"
    token_outputs = True

    @classmethod
    def config_section(cls) -> ml_collections.ConfigDict:
        """The ``mlm`` section (see jaxbert/data/masking.py for the masking keys)."""
        c = ml_collections.ConfigDict()
        c.mlm = mlm_config()
        return c

    def __init__(self, config: Any):
        self.config = config
        m, d = config.mlm, config.data
        self.max_length = int(d.max_length)
        if self.max_length < 3:
            raise ValueError(f"data.max_length={self.max_length} is too short: [CLS] and [SEP] need 2 positions "
                             "and at least one text token must fit (>= 3)")
        docs = load_documents(config)

        # ---------------------------------------------------------------- tokenizer
        if d.get("tokenizer") or config.model.init_from:
            self.tokenizer = self.load_task_tokenizer(
                config, resolve_model_path(config.model.init_from) if config.model.init_from else None)
        else:
            t = m.tokenizer
            out_dir = t.get("out_dir") or tempfile.mkdtemp(prefix="jaxbert_tokenizer_")
            self.tokenizer = load_tokenizer(train_tokenizer(
                docs["train"], out_dir, model=t.model, vocab_size=int(t.vocab_size), lowercase=bool(t.lowercase),
                min_frequency=int(t.min_frequency), multiple_of=int(m.vocab_multiple)))
            self.tokenizer_dir = out_dir
        tok = self.tokenizer
        for name in ("mask_token_id", "cls_token_id", "sep_token_id"):
            if getattr(tok, name) is None:
                raise ValueError(f"the tokenizer has no {name.replace('_id', '')}; MLM rows need [CLS], [SEP], [MASK]")

        # ---------------------------------------------------------------- rows
        self.packed = bool(m.packing)
        self.rows = {}
        for split, texts in docs.items():
            if split != "train" and (not texts or split not in config.eval_splits):
                continue
            self.rows[split] = build_rows(tokenize_with_words(tok, texts), tok, self.max_length, packing=self.packed)
            self.rows[split]["pad_token_id"] = tok.pad_token_id or 0
        self.stats = {s: r["stats"] for s, r in self.rows.items()}

        # ---------------------------------------------------------------- masking
        self.spec = masking_lib.MaskingSpec.from_tokenizer(tok, rate=float(m.rate), mask_prob=float(m.mask_prob),
                                                            random_prob=float(m.random_prob))
        ng = m.ngram
        uses_ngrams = m.masking == "ngram" or any(n == "ngram" for n, _ in (m.mixture or ()))
        self.lexicon = None
        if uses_ngrams:
            train = self.rows["train"]
            decode = lambda ids: tok.decode(ids)
            keep = lambda word: any(ch.isalnum() for ch in tok.decode(list(word)))
            self.lexicon = masking_lib.NgramLexicon.mine(
                zip(train["input_ids"], train["word_ids"]), max_n=int(ng.max_n), min_count=int(ng.min_count),
                size=int(ng.lexicon_size), method=ng.method, max_tokens=int(ng.max_tokens), keep_word=keep,
                decode=decode)
            if len(self.lexicon) == 0:
                raise ValueError("the mined n-gram lexicon is empty; lower mlm.ngram.min_count or use more text")
        self.masker = self._masker(m.masking, self.spec)
        eval_strategy = m.get("eval_masking") or m.masking
        eval_spec = self.spec if not m.get("eval_rate") else masking_lib.MaskingSpec.from_tokenizer(
            tok, rate=float(m.eval_rate), mask_prob=float(m.mask_prob), random_prob=float(m.random_prob))
        self.eval_masker = self._masker(eval_strategy, eval_spec)
        self.num_predictions = masking_lib.max_predictions(max(self.spec.rate, eval_spec.rate), self.max_length)
        self.with_ngrams = self.lexicon is not None

        # ---------------------------------------------------------------- model
        dec = m.decoder
        self.decoder = DecoderConfig(kind=dec.kind, num_layers=int(dec.num_layers),
                                     output_mix_prob=float(dec.output_mix_prob))
        self.rop = bool(m.bprop.enabled)
        if config.model.init_from:
            pre = self.load_model(config, self.hf_task)
        else:
            vocab = round_vocab_size(tokenizer_vocab_size(tok), int(m.vocab_multiple))
            pre = self.load_model(config, self.hf_task, overrides={"vocab_size": vocab})
        cfg, backbone, loaded = pre.config, pre.backbone, pre.params
        if loaded is None:
            pad = tok.pad_token_id
            if pad is not None and getattr(cfg, "pad_token_id", pad) != pad and \
                    "pad_token_id" not in model_overrides(config):
                cfg = cfg.replace(pad_token_id=pad)  # a preset's pad id (e.g. ModernBERT's 50283) means nothing here
        if getattr(cfg, "add_pooling_layer", False):
            cfg = cfg.replace(add_pooling_layer=False)
        if self.max_length > getattr(cfg, "max_position_embeddings", self.max_length):
            raise ValueError(f"data.max_length={self.max_length} exceeds the model's max_position_embeddings="
                             f"{cfg.max_position_embeddings}")
        check_vocab(tok, cfg.vocab_size, pretrained=loaded is not None)
        if self.packed and not _supports_segments(backbone):
            raise ValueError(f"backbone {getattr(backbone, '__name__', backbone)} has no segment_ids argument, so "
                             "packed rows would attend across documents; set mlm.packing=False")
        self.backbone = backbone
        self.model_config = cfg
        self.model = EncoderForPretraining(cfg, backbone, self.decoder,
                                           num_ngrams=len(self.lexicon) if self.lexicon else 0,
                                           max_ngram_tokens=int(ng.max_tokens) if self.lexicon else 0,
                                           rop=self.rop, mask_token_id=int(tok.mask_token_id))
        L, M = self.max_length, self.num_predictions
        self.sample_input = {"input_ids": np.zeros((1, L), np.int32), "attention_mask": np.ones((1, L), np.int32),
                             "token_type_ids": np.zeros((1, L), np.int32), "position_ids": np.zeros((1, L), np.int32),
                             "masked_positions": np.zeros((1, M), np.int32),
                             "masked_offsets": np.zeros((1, M), np.int32)}
        if self.packed:
            self.sample_input["segment_ids"] = np.ones((1, L), np.int32)
        if self.with_ngrams:
            self.sample_input["ngram_positions"] = np.zeros((1, M), np.int32)
        self.pretrained_params = None
        if loaded is not None:
            fresh = nn.unbox(jax.jit(lambda r: self.model.init(r, **self.sample_input))(
                jax.random.key(config.seed))["params"])
            fresh = dict(fresh)
            for k in ("encoder", "mlm_head"):
                fresh[k] = loaded[k]
            self.pretrained_params = fresh

        # ---------------------------------------------------------------- B-PROP
        self.rop_pairs = None
        if self.rop:
            from jaxbert.tasks import bprop
            self.rop_pairs = bprop.build_rop_pairs_for_task(self, docs["train"])

        self.train_source = self.rows["train"]["input_ids"]  # len() = rows per epoch (the loop's epoch size)
        self.eval_sources = {s: self.rows[s] for s in ("validation", "test")
                             if s in self.rows and s in config.eval_splits}
        self.attach_peft(config)

    def check_peft(self, method) -> None:
        """Soft prompts refused (per-token outputs); the fresh pretraining heads must be trainable."""
        from jaxbert.peft import PeftError
        super().check_peft(method)
        fresh = sorted(k for k in self.fresh_heads() if not method.is_head(f"{k}/"))
        if fresh:
            raise PeftError(f"task 'mlm': peft.method={method.name!r} would freeze the freshly initialised "
                            f"pretraining head(s) {fresh} (mlm.decoder / mlm.ngram / mlm.bprop); add them to "
                            f"peft.head_regex (now {method.head_regex!r}), e.g. "
                            f"'^({'|'.join(fresh)}|classifier|qa_head|encoder/pooler)/'")

    def fresh_heads(self) -> list[str]:
        """Top-level param names of the pretraining-only heads this model has (freshly initialised)."""
        shapes = jax.eval_shape(lambda r: self.base_model.init(r, **self.sample_input), jax.random.key(0))["params"]
        return [k for k in shapes if k in PRETRAINING_ONLY]

    # -------------------------------------------------------------------- masking
    def _masker(self, strategy: str, spec: masking_lib.MaskingSpec):
        m = self.config.mlm
        if strategy in ("ngram",) and self.lexicon is None:
            raise ValueError("eval masking 'ngram' needs n-gram training (mlm.masking='ngram')")
        return masking_lib.build_masker(strategy, spec, span_p=float(m.span_p), span_max=int(m.span_max),
                                        lexicon=self.lexicon, ngram_max_tokens=int(m.ngram.max_tokens),
                                        mixture=tuple((str(n), float(p)) for n, p in (m.mixture or ())))

    # -------------------------------------------------------------------- data
    def train_iterator(self, batch_size: int, seed: int):
        it = make_mlm_train_iterator(self.rows["train"], self.masker, batch_size=batch_size, seed=seed,
                                     num_predictions=self.num_predictions, packed=self.packed,
                                     with_ngrams=self.with_ngrams)
        if self.rop_pairs is not None:
            from jaxbert.tasks import bprop
            return bprop.RopAugmentedIterator(it, self.rop_pairs, seed)
        return it

    def eval_batches(self, split: str, batch_size: int):
        return make_mlm_eval_batches(self.rows[split], self.eval_masker, batch_size=batch_size,
                                     seed=int(self.config.mlm.eval_seed), num_predictions=self.num_predictions,
                                     packed=self.packed, with_ngrams=self.with_ngrams)

    # -------------------------------------------------------------------- model
    def _apply(self, params, batch, rng, deterministic, **kw):
        rngs = None if deterministic else {"dropout": rng}
        inputs = {k: batch[k] for k in MODEL_KEYS if k in batch}
        return self.model.apply({"params": params}, **inputs, deterministic=deterministic, rngs=rngs, **kw)

    def loss_fn(self, params, batch, rng, deterministic: bool = False):
        """MLM (+ n-gram, + ROP) loss; ``sums`` carries the MLM accuracy and the prediction count."""
        out = self._apply(params, batch, rng, deterministic)
        mlm_mean, sums = masked_lm_loss(out["logits"], batch["masked_labels"])
        total = mlm_mean
        extras = {"mlm_loss": mlm_mean}
        if self.with_ngrams:
            ng_mean, ng = masked_lm_loss(out["ngram_logits"], batch["ngram_labels"])
            total = total + float(self.config.mlm.ngram.loss_weight) * ng_mean
            extras["ngram_loss"] = ng_mean
            extras["ngram_accuracy"] = ng["accuracy"] / jnp.maximum(ng["weight"], 1.0)
        if self.rop and "rop_pos_input_ids" in batch:
            scores = []
            for side in ("pos", "neg"):
                sub = {k: batch[f"rop_{side}_{k}"] for k in ("input_ids", "attention_mask", "token_type_ids")}
                r = None if rng is None else jax.random.fold_in(rng, 1 if side == "pos" else 2)
                scores.append(self._apply(params, sub, r, deterministic, mode="rop")["rop_score"])
            rop_mean, rop = pairwise_hinge_loss(*scores)
            total = total + float(self.config.mlm.bprop.weight) * rop_mean
            extras["rop_loss"] = rop_mean
            extras["rop_accuracy"] = rop["accuracy"] / jnp.maximum(rop["weight"], 1.0)
        w = sums["weight"]
        extras["packing_efficiency"] = jnp.mean(batch["attention_mask"].astype(jnp.float32))  # non-pad fraction
        return total, {"loss": total * w, "accuracy": sums["accuracy"], "weight": w, **extras}

    def predict_fn(self, params, batch):
        out = self._apply(params, batch, None, True)
        _, sums = masked_lm_loss(out["logits"], batch["masked_labels"])
        if self.with_ngrams:
            _, ng = masked_lm_loss(out["ngram_logits"], batch["ngram_labels"])
            sums.update(ngram_loss=ng["loss"], ngram_accuracy=ng["accuracy"], ngram_weight=ng["weight"])
        counts = jnp.sum(batch["masked_labels"] != masking_lib.IGNORE, axis=-1).astype(jnp.int32)
        real = (batch["segment_ids"] > 0) if "segment_ids" in batch else (batch["position_ids"] > 0)
        real = real | (batch["attention_mask"] > 0)
        used_rows = jnp.sum(jnp.any(real, axis=-1))  # rows padding the last eval batch are empty
        sums.update(real_tokens=jnp.sum(real).astype(jnp.float32),
                    row_tokens=(used_rows * batch["input_ids"].shape[1]).astype(jnp.float32))
        return {"num_predictions": counts}, sums

    @classmethod
    def config_rules(cls) -> tuple:
        from jaxbert.config_rules import int_at_least, number_in  # pylint: disable=import-outside-toplevel
        return (number_in("mlm.rate", 0, 1, "fraction of maskable tokens predicted", low_open=True),
                number_in("mlm.eval_rate", 0, 1, "held-out masking rate", low_open=True, none_ok=True),
                number_in("mlm.mask_prob", 0, 1, "chosen units replaced by [MASK]"),
                number_in("mlm.random_prob", 0, 1, "chosen units replaced by a random token"),
                number_in("mlm.span_p", 0, 1, "geometric span-length parameter", low_open=True),
                int_at_least("mlm.span_max", 1, "longest masked span in words"),
                int_at_least("mlm.max_documents", 1, "cap on train documents", none_ok=True),
                int_at_least("mlm.vocab_multiple", 1, "vocab size rounded up to this multiple"),
                int_at_least("mlm.tokenizer.vocab_size", 1, "trained tokenizer's vocabulary"))

    def metric_names(self, split: str) -> frozenset[str]:
        ngram = {"ngram_loss", "ngram_accuracy", "num_ngram_predictions"} if self.with_ngrams else set()
        return frozenset({"loss", "accuracy", "perplexity", "num_predictions", "packing_efficiency"} | ngram)

    def eval_metrics(self, outputs: dict[str, np.ndarray], sums: dict[str, float]) -> dict[str, float]:
        w = max(sums["weight"], 1.0)
        loss = sums["loss"] / w
        metrics = {"loss": loss, "accuracy": sums["accuracy"] / w, "perplexity": float(np.exp(min(loss, 50.0))),
                   "num_predictions": int(sums["weight"]),
                   # non-pad fraction of the evaluated rows
                   "packing_efficiency": sums["real_tokens"] / max(sums["row_tokens"], 1.0)}
        if "ngram_weight" in sums:
            gw = max(sums["ngram_weight"], 1.0)
            metrics.update(ngram_loss=sums["ngram_loss"] / gw, ngram_accuracy=sums["ngram_accuracy"] / gw,
                           num_ngram_predictions=int(sums["ngram_weight"]))
        return metrics

    # -------------------------------------------------------------------- persistence
    def extra_state(self) -> dict[str, Any]:
        return {"mlm": {"masking": self.config.mlm.masking, "rows": self.stats,
                        "num_predictions": self.num_predictions,
                        "lexicon_size": len(self.lexicon) if self.lexicon else 0}}

    def write_export(self, params, path: str | os.PathLike) -> Path:
        """HF ``BertForMaskedLM`` directory + tokenizer; pretraining-only heads are dropped.

        BERT and M2 exports also get a freshly initialised pooler (MLM never trains it), so
        ``load_pretrained(..., task="sequence_classification")`` finds every backbone key. The
        tokenizer is written inside the same atomic directory swap as the weights.
        Backbones without an HF key table are saved as ``params.msgpack`` + ``config.json``.
        """
        keep, dropped = split_pretraining_params(dict(params))
        cfg = self.model_config
        note = {"masking": self.config.mlm.masking, "rate": float(self.config.mlm.rate),
                "decoder": dataclasses.asdict(self.decoder), "dropped_pretraining_heads": sorted(dropped),
                "rows": self.stats}
        spec = registry.spec_of(cfg)
        if spec.has_hf_format:
            keep = dict(keep)
            if spec.has_pooler and "pooler" not in keep["encoder"]:
                rng = np.random.default_rng(int(self.config.seed))
                h = cfg.hidden_size
                enc = dict(keep["encoder"])
                enc["pooler"] = {"dense": {
                    "kernel": rng.normal(0.0, cfg.initializer_range, (h, h)).astype(np.float32),
                    "bias": np.zeros((h,), np.float32)}}
                keep["encoder"] = enc
            return hf_convert.save_pretrained(path, keep, cfg, task="mlm", extra_config={"jaxbert_pretraining": note},
                                              tokenizer=self.tokenizer, extra_files=self._write_lexicon)
        from flax import serialization
        from jaxbert.convert.atomic_dir import atomic_directory
        cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
        with atomic_directory(path) as tmp:  # weights, config, tokenizer, lexicon: one swap
            (tmp / "params.msgpack").write_bytes(serialization.to_bytes(keep))
            (tmp / "config.json").write_text(json.dumps({"jaxbert_config": cfg_dict, "jaxbert_pretraining": note},
                                                        indent=2, default=str))
            self.tokenizer.save_pretrained(str(tmp))
            self._write_lexicon(tmp)
        return Path(path)

    def _write_lexicon(self, out: Path) -> None:
        """The n-gram lexicon of n-gram masking, next to the exported weights (nothing otherwise)."""
        if self.lexicon is not None:
            self.lexicon.save(out / "ngram_lexicon.json")


def mlm_config() -> ml_collections.ConfigDict:
    """Keys of the ``mlm`` task (see jaxbert/tasks/mlm.py and jaxbert/data/masking.py)."""
    m = ml_collections.ConfigDict()
    m.masking = "random"  # random | whole_word | span | ngram | mixture
    m.rate = 0.15  # fraction of maskable tokens predicted (MosaicBERT: 0.30)
    m.mask_prob = 0.8  # of the chosen units: [MASK] / random token / unchanged = 0.8 / 0.1 / 0.1
    m.random_prob = 0.1
    m.span_p = 0.2  # SpanBERT: span length in words ~ Geometric(p) clipped at span_max
    m.span_max = 10
    m.mixture = ()  # masking="mixture": (("whole_word", 0.5), ("span", 0.5))
    m.eval_masking = config_dict.placeholder(str)  # held-out masking (None: same as training)
    m.eval_rate = config_dict.placeholder(float)  # held-out rate (None: same as training)
    m.eval_seed = 1234  # held-out masks are fixed, so numbers compare across steps and runs
    m.packing = True  # several documents per row, attention kept within each (segment ids)
    m.id_field = config_dict.placeholder(str)  # record field matched against the held-out ids
    m.validation_ids = ()
    m.test_ids = ()
    m.max_documents = config_dict.placeholder(int)  # cap on train documents (smoke runs)
    m.vocab_multiple = 64  # model vocab_size = tokenizer size rounded up to this multiple
    m.tokenizer = ml_collections.ConfigDict()  # used when data.tokenizer and model.init_from are None
    m.tokenizer.model = "wordpiece"  # wordpiece | bpe | unigram
    m.tokenizer.vocab_size = 8192
    m.tokenizer.lowercase = True
    m.tokenizer.min_frequency = 2
    m.tokenizer.out_dir = config_dict.placeholder(str)  # None: a temporary directory (exported anyway)
    m.ngram = ml_collections.ConfigDict()  # ERNIE-Gram explicit n-gram masking
    m.ngram.max_n = 3
    m.ngram.min_count = 5
    m.ngram.lexicon_size = 5000
    m.ngram.method = "tscore"  # tscore | pmi
    m.ngram.max_tokens = 6  # longest n-gram (in tokens) collapsed into one [MASK]
    m.ngram.loss_weight = 1.0
    m.decoder = ml_collections.ConfigDict()  # DrBERT MLM decoder (pretraining only)
    m.decoder.kind = "none"  # none | blocks | gua
    m.decoder.num_layers = 2
    m.decoder.output_mix_prob = 0.0
    m.bprop = ml_collections.ConfigDict()  # B-PROP representative-words prediction
    m.bprop.enabled = False
    m.bprop.weight = 1.0
    m.bprop.teacher = config_dict.placeholder(str)  # HF dir of the bootstrapping BERT (None: model.init_from)
    m.bprop.pairs_per_document = 2
    m.bprop.set_size_mean = 3.0  # Poisson mean of the word-set size
    m.bprop.temperature = 1.0
    m.bprop.max_length = 128
    m.bprop.max_documents = 2000  # documents (rows) the teacher reads to build pairs
    return m
