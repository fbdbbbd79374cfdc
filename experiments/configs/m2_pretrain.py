r"""Masked-LM pretraining of a Monarch Mixer BERT (M2-BERT) on Brown, through the ordinary MLM task.

M2 is a registry preset like any other encoder, so this is ``pretrain_mlm.py`` with
``model.preset=m2-bert-...``, one sequence per row (a convolution over a packed row would mix
documents; the MLM task refuses packing for backbones without ``segment_ids``) and the M2-BERT
recipe of ``bert/yamls/pretrain/monarch-mixer-pretrain-786dim-80m-parameters.yaml``: 30% masking,
AdamW (b2 0.98, eps 1e-6, weight decay 1e-5), lr 8e-4 with 6% warmup and linear decay, gradient
clipping 1.0, and the long-convolution filters at lr 1e-3 (an ``optim.groups`` rule with
``lr_mult = 1e-3 / 8e-4``; the reference's separate filter weight decay 0.1 is not reproduced).

Run (tokenizer trained on Brown first, held-out MLM loss on the Brown validation documents)::

    python -m experiments.launch --config experiments/configs/m2_pretrain.py:tiny \
        --workdir runs/m2_tiny_brown
    # the paper's 80M model (a long run on CPU):
    python -m experiments.launch --config experiments/configs/m2_pretrain.py:80m --workdir runs/m2_80m_brown
    # smoke run (seconds)
    python -m experiments.launch --config experiments/configs/m2_pretrain.py:tiny,runlocal --workdir /tmp/m2_smoke

The export (``<workdir>/export``) is ``model.safetensors`` in the reference's key names
(HazyResearch/m2 ``BertForMaskedLM``; table in ``jaxbert/convert/m2.py``) + ``config.json`` +
the Brown tokenizer, written in one atomic directory swap. It is what ``model.init_from`` reads:
the long-document retrieval harness starts from it (``m2_retrieval.py`` docstring)::

    python -m experiments.launch --config experiments/configs/m2_pretrain.py:tiny --workdir runs/m2_tiny_brown
    python -m experiments.launch \
        --config experiments/configs/m2_retrieval.py:tiny,init=runs/m2_tiny_brown/export \
        --workdir runs/m2_bbc_long_from_brown

Measured short run (800 steps) and the retrieval numbers from it: ``docs/m2.md``.

Argument: ``<size>[,flag...]`` with size ``tiny`` (m2-bert-tiny), ``80m``, ``110m`` or any M2
preset name; flags are ``pretrain_mlm.py``'s (``runlocal``, ``mosaic``, masking names).
"""

from __future__ import annotations

from experiments.configs import pretrain_mlm
from experiments.configs.args import parse_arg

SIZES = {"tiny": "m2-bert-tiny", "80m": "m2-bert-80m", "110m": "m2-bert-110m"}
FILTER_LR = 1e-3
PEAK_LR = 8e-4
#: ``SIZE[,MASKING][,flag...]``: pretrain_mlm.py's arguments, size ``tiny`` by default
ARGS = {**pretrain_mlm.ARGS, "size": "tiny"}


def get_config(arg: str | None = None):
    a = parse_arg(arg, ARGS, positional=("size", "masking"), choices={"masking": pretrain_mlm.MASKINGS})
    a.size = SIZES.get(a.size, a.size)
    a.nopack = True  # a convolution over a packed row would mix documents
    c = pretrain_mlm.build(a)
    c.mlm.packing = False
    c.mlm.rate = 0.30
    c.optim.learning_rate = PEAK_LR
    c.optim.schedule = "linear"
    c.optim.warmup_ratio = 0.06
    c.optim.end_lr_factor = 0.02  # alpha_f
    c.optim.b2 = 0.98
    c.optim.eps = 1e-6
    c.optim.weight_decay = 1e-5
    c.optim.groups = ({"regex": r".*/mixer/filter_fn2?/.*", "lr_mult": FILTER_LR / PEAK_LR},)
    return c
