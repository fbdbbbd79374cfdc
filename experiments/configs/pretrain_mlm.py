r"""Pretrain a BERT-family encoder from scratch with masked language modeling.

Run (a tokenizer is trained on the Brown train documents first; held-out = the Brown
validation documents listed in ../shared/data/README.md):

    python -m experiments.launch --config experiments/configs/pretrain_mlm.py:mini,span \
        --workdir runs/pretrain_mini_span

then fine-tune the export on trec:

    python -m experiments.launch --config experiments/configs/finetune_classification.py:trec \
        --config.model.init_from=runs/pretrain_mini_span/export --workdir runs/trec_from_mini_span

Argument: ``<size>,<masking>[,flag...]``

* size: ``tiny`` (2L/128H), ``mini`` (4L/256H), ``small`` (4L/512H), ``base`` (12L/768H), or
  any registry preset name (e.g. another engineer's architecture).
* masking: ``random``, ``whole_word``, ``span`` (SpanBERT), ``ngram`` (ERNIE-Gram), ``mixture``
  (whole_word / span / random at 0.4 / 0.4 / 0.2, LegalTurk-style).
* flags: ``mosaic`` (MosaicBERT recipe: 30% masking, bf16 compute, 6% warmup + linear decay,
  lr 5e-4), ``prenorm`` (the size's shape on the ModernBERT block: pre-norm, RoPE, GeGLU, no
  biases, no dropout, lr 3e-3 for tiny/mini; it leaves the unigram plateau of post-norm BERT
  several times sooner, see docs/pretraining.md; exported as an HF ModernBERT directory), ``decoder`` / ``gua`` (DrBERT decoder: 2 blocks, plain or gradual-unmasking),
  ``nopack`` (one sequence per row), ``runlocal`` (a seconds-long smoke run on 40 documents).

Other text: ``--config.data.train=a.jsonl,b.jsonl.gz --config.mlm.id_field=None`` (any JSONL with
a ``text`` field; ``--config.data.validation=held_out.jsonl`` for a held-out file).
"""

from __future__ import annotations

from experiments.configs.args import parse_arg
from experiments.configs.common import base_config
from jaxbert.data.sources import data_dir

SIZES = {"tiny": "bert-tiny", "mini": "bert-mini", "small": "bert-small", "base": "bert-base"}
MASKINGS = ("random", "whole_word", "span", "ngram", "mixture")
FLAGS = ("mosaic", "prenorm", "decoder", "gua", "nopack", "runlocal")
#: ``SIZE,MASKING[,flag...]`` (``size``: a key of :data:`SIZES` or any registry preset name)
ARGS = {"size": "mini", "masking": "random", **{f: False for f in FLAGS}}
# (layers, hidden, heads) of each size, for the ``prenorm`` block.
SHAPES = {"tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8), "base": (12, 768, 12)}


def prenorm_overrides(size: str) -> dict:
    """Model overrides that build size ``size`` on the ModernBERT block (pre-norm, RoPE, GeGLU, no biases).

    The GLU width is 8/3 x hidden rounded to a multiple of 64, which matches the parameter count of
    BERT's 4 x hidden GELU MLP; every layer attends globally (rows are at most a few hundred tokens).
    """
    if size not in SHAPES:
        raise ValueError(f"the prenorm flag needs one of the sizes {sorted(SHAPES)}, got {size!r}")
    layers, hidden, heads = SHAPES[size]
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                intermediate_size=64 * round(8 * hidden / 3 / 64), max_position_embeddings=512,
                attention_pattern="global")

# ../shared/data/README.md, "brown": split by document, seed 0, 80/10/10.
BROWN_VALIDATION = ("ca22 ca31 ca36 ca37 ca39 cb13 cb27 cc07 cd05 ce27 ce29 ce31 cf02 cf08 cf17 cf18 cf29 cg02 "
                    "cg08 cg12 cg26 cg34 cg47 cg54 cg67 ch01 ch02 ch20 cj01 cj11 cj21 cj25 cj29 cj31 cj43 cj54 "
                    "ck08 ck12 ck23 cl05 cl06 cl19 cn02 cn09 cn14 cp05 cp13 cp19 cr02").split()
BROWN_TEST = ("ca07 ca20 ca27 ca42 cb18 cb22 cb23 cc04 cc16 cd08 cd12 ce13 ce17 ce23 ce26 cf06 cf07 cf26 cf31 "
              "cf41 cg27 cg41 cg46 cg56 cg57 cg62 cg71 ch04 ch12 ch27 cj17 cj37 cj40 cj46 cj50 cj62 cj76 cj79 "
              "ck04 ck09 ck24 cl02 cl09 cm03 cn13 cn25 cn28 cp04 cp16 cp20 cr08").split()


def get_config(arg: str | None = None):
    return build(parse_arg(arg, ARGS, positional=("size", "masking"), choices={"masking": MASKINGS}))


def build(a):
    """The config of parsed arguments ``a`` (keys of :data:`ARGS`; ``m2_pretrain.py`` builds on it)."""
    size, masking = a.size, a.masking
    c = base_config("mlm")
    c.task = "mlm"
    c.model.init_from = None
    c.model.preset = SIZES.get(size, size)
    c.data.train = str(data_dir() / "brown" / "text.jsonl.gz")
    c.data.text_field = "text"
    c.data.max_length = 128
    c.mlm.id_field = "doc_id"
    c.mlm.validation_ids = tuple(BROWN_VALIDATION)
    c.mlm.test_ids = tuple(BROWN_TEST)
    c.eval_splits = ("validation",)
    c.mlm.masking = masking
    if masking == "mixture":
        c.mlm.mixture = (("whole_word", 0.4), ("span", 0.4), ("random", 0.2))
    c.mlm.tokenizer.model = "wordpiece"
    c.mlm.tokenizer.vocab_size = 8192
    c.mlm.packing = not a.nopack
    c.checkpoint.best_metric = "validation/accuracy"

    c.batch_size = 64
    c.eval_batch_size = 128
    c.num_epochs = 8.0  # Brown train: ~9.4k rows of 128 tokens
    c.optim.learning_rate = 1e-3 if size in ("tiny", "mini") else 5e-4
    c.optim.warmup_ratio = 0.06
    c.optim.weight_decay = 0.01
    c.optim.b2 = 0.98
    c.optim.eps = 1e-6
    c.log_every = 50
    c.eval_every = 500
    if a.mosaic:
        c.mlm.rate = 0.30
        c.model.overrides.dtype = "bfloat16"
        c.optim.learning_rate = 5e-4
        c.optim.schedule = "linear"
        c.optim.warmup_ratio = 0.06
    if a.prenorm:
        c.model.preset = "modernbert-base"
        for k, v in prenorm_overrides(size).items():
            c.model.overrides[k] = v
        c.model.overrides.hidden_dropout_prob = 0.0
        c.model.overrides.attention_probs_dropout_prob = 0.0
        c.optim.learning_rate = 3e-3 if size in ("tiny", "mini") else 1e-3
    if a.decoder or a.gua:
        c.mlm.decoder.kind = "gua" if a.gua else "blocks"
        c.mlm.decoder.num_layers = 2
    if a.runlocal:
        c.mlm.max_documents = 40
        c.data.max_length = 64
        c.batch_size = 8
        c.eval_batch_size = 32
        c.num_train_steps = 6
        c.log_every = 2
        c.eval_every = 0
        c.mlm.tokenizer.vocab_size = 2000
        c.mlm.ngram.min_count = 2
    return c
