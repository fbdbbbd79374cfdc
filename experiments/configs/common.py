"""Defaults shared by every experiment config. Configs call ``base_config()`` and override.

Every key a run can take exists here, so ``--config.some_key=...`` for a key that does not
exist is an error (the launcher suggests the nearest valid keys).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from jaxbert.train.mesh import DEFAULT_RULES
from jaxbert.train.optim import default_optim_config
from jaxbert.peft import default_config as default_peft_config


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "classification"
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.init_from = config_dict.placeholder(str)  # HF dir or "asset:minilm"; None = random init
    c.model.preset = "bert-tiny"  # registry preset used for random init
    # Model config fields to replace (None = keep the checkpoint's / preset's value).
    c.model.overrides = ml_collections.ConfigDict()
    c.model.overrides.dtype = config_dict.placeholder(str)  # compute dtype: "float32" | "bfloat16"
    c.model.overrides.param_dtype = config_dict.placeholder(str)
    c.model.overrides.hidden_dropout_prob = config_dict.placeholder(float)
    c.model.overrides.attention_probs_dropout_prob = config_dict.placeholder(float)
    c.model.overrides.attention_implementation = config_dict.placeholder(str)
    c.model.overrides.remat = config_dict.placeholder(bool)

    c.data = ml_collections.ConfigDict()
    c.data.train = config_dict.placeholder(str)
    c.data.validation = config_dict.placeholder(str)
    c.data.test = config_dict.placeholder(str)
    c.data.tokenizer = config_dict.placeholder(str)  # HF dir or "asset:NAME"; default: model.init_from
    c.data.text_field = "text"
    c.data.pair_field = config_dict.placeholder(str)
    c.data.label_field = "label"
    c.data.labels = config_dict.placeholder(tuple)  # None: sorted distinct values of train
    c.data.max_length = 128
    c.data.buckets = config_dict.placeholder(tuple)
    # Downstream tasks on pre-tokenized features (token_classification, question_answering,
    # multilabel, regression; jaxbert/tasks/*.py).
    c.data.train_subset = config_dict.placeholder(int)  # train on a seeded random subset of N records
    c.data.train_subset_seed = 0
    c.data.group_by_length = config_dict.placeholder(int)  # batches of similar length (G batches sorted together)
    c.data.tokens_field = "tokens"  # token classification: words ...
    c.data.tags_field = "tags"  # ... and one tag per word
    c.data.label_alignment = "first"  # "first" piece of each word labelled | "all" pieces
    c.data.tag_scheme = "auto"  # auto | none (plain tags, POS) | bio | bioes
    c.data.strict_spans = False  # seqeval strict mode for span P/R/F1
    c.eval_splits = ("validation", "test")
    c.qa = ml_collections.ConfigDict()  # extractive QA (SQuAD JSON)
    c.qa.doc_stride = 128  # overlap in tokens between windows of a long context (HF run_qa convention)
    c.qa.max_query_length = 64
    c.qa.max_answer_length = 30
    c.qa.version_2_with_negative = config_dict.placeholder(bool)  # None: on if a file has is_impossible
    c.qa.null_score_diff_threshold = 0.0
    c.qa.answer_mismatch = "error"  # error | nearest | skip (answer text not at answer_start)
    c.multilabel = ml_collections.ConfigDict()
    c.multilabel.tune_thresholds = True  # per-label thresholds tuned on the validation split
    c.multilabel.default_threshold = 0.5

    c.batch_size = 32  # global
    c.eval_batch_size = 128
    c.grad_accum_steps = 1
    c.num_epochs = 1.0
    c.num_train_steps = config_dict.placeholder(int)  # overrides num_epochs
    c.label_smoothing = 0.0
    c.reinit_top_layers = 0

    c.optim = default_optim_config()

    # Parameter-efficient / half fine-tuning (jaxbert/peft): method 'none' = full fine-tuning;
    # each method's options in its own section (peft.lora, peft.adapter, ..., peft.hft).
    c.peft = default_peft_config()

    c.mlm = mlm_config()  # task "mlm" only (experiments/configs/pretrain_mlm.py)

    # Parallelism: change these, never the model.
    c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    c.logical_axis_rules = DEFAULT_RULES

    c.log_every = 50
    c.eval_every = 0  # 0: evaluate only at the end
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 0  # 0: only at evaluations, preemption and the end
    c.checkpoint.keep_last = 2
    c.checkpoint.keep_best = 1
    c.checkpoint.best_metric = "validation/accuracy"
    c.checkpoint.best_mode = "max"
    c.export_hf = True
    c.tensorboard = True
    c.progress = True
    c.debug_sigterm_at_step = config_dict.placeholder(int)  # tests only: SIGTERM self at this step
    return c


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
