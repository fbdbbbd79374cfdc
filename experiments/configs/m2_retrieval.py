r"""Long-document retrieval fine-tuning of M2-BERT (LoCo recipe) on BBC News, evaluated by nDCG@10.

Task: the LoCo-style set of :mod:`jaxbert.data.long_retrieval`, built from ``../shared/data/bbc_news``
(query = the article's title, document = the rest of the article; the 425 test articles are the
evaluation queries and corpus, the 1,699 train articles the training pairs). Documents are read
up to their full length (longest test body: 5,295 WordPiece tokens), so the model runs at up to
8,192 tokens: ``max_position_embeddings = long_conv_l_max = 8192``, like LoCo's
``m2-bert-80M-8k-retrieval``.

Training follows LoCo's batch-size-1 setting: each step embeds one title, its article and one
other article (an in-sample negative). The loss is InfoNCE over those two candidates
(``contrastive.objective = "mnrl"`` with the negative field; with one row per batch the in-batch
candidates are exactly the row's own), the option the issue allows; LoCo's orthogonal projection
loss is :func:`jaxbert.objectives.long_retrieval.orthogonal_projection_loss` (not yet selectable
in the contrastive task). Embeddings: mean pooling, L2-normalised; evaluation: exact cosine search
over the 425 documents, nDCG@10 / MRR@10 / Recall@k (``jaxbert/eval/retrieval.py``).

Run from random init (tokenizer: bert-base-uncased WordPiece via MiniLM's, 30,522 ids = M2-BERT's
vocabulary)::

    python -m experiments.launch --config experiments/configs/m2_retrieval.py:tiny \
        --workdir runs/m2_bbc_long_tiny
    # smoke run: a few steps, 40 queries
    python -m experiments.launch --config experiments/configs/m2_retrieval.py:tiny,runlocal \
        --workdir /tmp/m2_bbc_long_smoke
    # the 80M model at 8k tokens (LoCo learning rate 5e-6 assumes a pretrained start)
    python -m experiments.launch --config experiments/configs/m2_retrieval.py:80m --workdir runs/m2_bbc_long_80m

**The pretrain -> retrieval chain.** ``m2_pretrain.py`` exports the MLM-pretrained M2 as
``<workdir>/export`` (``model.safetensors`` in the reference's key names + ``config.json`` +
the Brown-trained tokenizer; ``jaxbert/convert/m2.py``). ``init=<dir>`` starts from it: the
model shape, the filters' ``long_conv_l_max`` and the tokenizer all come from that directory
(``data.tokenizer`` is cleared), only the position table is enlarged to 8,192 rows (the learned
rows tiled, reported in the load report)::

    python -m experiments.launch --config experiments/configs/m2_pretrain.py:tiny --workdir runs/m2_tiny_brown
    python -m experiments.launch \
        --config experiments/configs/m2_retrieval.py:tiny,init=runs/m2_tiny_brown/export \
        --workdir runs/m2_bbc_long_from_brown
    # (the plain config with --config.model.init_from=... would keep MiniLM's tokenizer and rescale the
    # filters to long_conv_l_max=8192: use init=)

The run's ``export/`` is a sentence-transformers-style directory (modules.json + pooling) around the
M2 weights in the reference's key names; ``model.init_from`` reads it back (sentence-transformers
itself cannot build M2 without the reference's modelling code).

Argument: ``<size>[,runlocal][,init=<dir>]`` with size ``tiny`` (m2-bert-tiny) or ``80m``
(m2-bert-80m), both with 8k positions; ``size`` sets the learning rate (and the shape when there
is no ``init=``).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from experiments.configs.args import parse_arg
from experiments.configs.common import base_config
from experiments.configs.sentence_embedding import contrastive_config, retrieval_eval

SIZES = {"tiny": "m2-bert-tiny", "80m": "m2-bert-80m"}
#: ``SIZE[,runlocal][,init=EXPORT_DIR]``
ARGS = {"size": "tiny", "runlocal": False, "init": None}
MAX_LENGTH = 8192


def get_config(arg: str | None = None):
    from jaxbert.data.long_retrieval import bbc_long_retrieval

    a = parse_arg(arg, ARGS, positional=("size",), choices={"size": SIZES})
    size, init = a.size, a.init
    folder = bbc_long_retrieval()
    small = a.runlocal

    c = base_config("contrastive")
    c.task = "contrastive"
    c.model.init_from = None
    c.model.preset = SIZES[size]
    c.model.overrides.max_position_embeddings = MAX_LENGTH
    if not init:  # from a checkpoint the filters keep its long_conv_l_max (their time scale)
        c.model.overrides.long_conv_l_max = MAX_LENGTH
    c.model.overrides.add_pooling_layer = False
    c.contrastive = contrastive_config()
    c.contrastive.objective = "mnrl"
    c.contrastive.pooling = "mean"
    c.contrastive.scale = 20.0
    c.data.tokenizer = "asset:minilm"
    if init:  # shape, filters' time scale and tokenizer from the pretraining export
        c.model.init_from = init
        c.data.tokenizer = None
    c.data.train = str(folder / "train_pairs.jsonl")
    c.data.anchor_field = "anchor"
    c.data.positive_field = "positive"
    c.data.negative_field = "negative"
    c.data.score_field = config_dict.placeholder(str)
    c.data.domain_field = config_dict.placeholder(str)
    c.data.teacher_field = config_dict.placeholder(str)
    c.data.max_length = MAX_LENGTH
    c.data.eval_max_length = MAX_LENGTH
    c.data.buckets = (512, 1024, 2048, 4096, MAX_LENGTH)

    c.evals = ml_collections.ConfigDict()
    c.evals.bbc_long = retrieval_eval(str(folder / "test_queries.jsonl"), str(folder / "test_corpus.jsonl"),
                                      str(folder / "test_qrels.jsonl"), *((0, 40) if small else (None, None)))
    c.eval_splits = ("bbc_long",)
    c.checkpoint.best_metric = "bbc_long/ndcg@10"
    c.checkpoint.best_mode = "max"

    c.batch_size = 1  # LoCo: one (query, document, negative) per step
    c.eval_batch_size = 4
    c.num_epochs = 1.0
    c.optim.learning_rate = 1e-4 if size == "tiny" else 5e-6  # LoCo's 5e-6 is for fine-tuning a pretrained M2
    c.optim.b2 = 0.98
    c.optim.eps = 1e-6
    c.optim.weight_decay = 1e-6
    c.optim.warmup_ratio = 0.06
    c.optim.end_lr_factor = 0.02
    c.log_every = 50
    c.export_hf = True  # sentence-transformers layout around reference-named M2 weights (docstring)
    if small:
        c.num_train_steps = 4
        c.log_every = 1
        c.data.max_length = 1024
        c.data.buckets = (512, 1024)
    return c
