r"""Parameter-efficient / half fine-tuning of all-MiniLM-L6-v2 on a classification dataset.

``get_config("METHOD,DATASET[,runlocal][,tiny]")``: the ``finetune_classification`` config of
DATASET (rotten_tomatoes, trec, sms_spam, bbc_news) with ``peft.method = METHOD`` and that
method's default learning rate (``jaxbert.peft.METHODS[METHOD].default_learning_rate``). One
command per method (``--workdir`` anywhere):

    python -m experiments.launch --config experiments/configs/peft.py:full,rotten_tomatoes --workdir runs/rt_full
    python -m experiments.launch --config experiments/configs/peft.py:lora,rotten_tomatoes --workdir runs/rt_lora
    python -m experiments.launch --config experiments/configs/peft.py:houlsby,rotten_tomatoes --workdir runs/rt_houlsby
    python -m experiments.launch --config experiments/configs/peft.py:pfeiffer,rotten_tomatoes --workdir runs/rt_pfeiffer
    python -m experiments.launch --config experiments/configs/peft.py:prefix,rotten_tomatoes --workdir runs/rt_prefix
    python -m experiments.launch --config experiments/configs/peft.py:prompt,rotten_tomatoes --workdir runs/rt_prompt
    python -m experiments.launch --config experiments/configs/peft.py:bitfit,rotten_tomatoes --workdir runs/rt_bitfit
    python -m experiments.launch --config experiments/configs/peft.py:lightweight_emb,rotten_tomatoes --workdir runs/rt_lw_emb
    python -m experiments.launch --config experiments/configs/peft.py:lightweight_last,rotten_tomatoes --workdir runs/rt_lw_last
    python -m experiments.launch --config experiments/configs/peft.py:dsee,rotten_tomatoes --workdir runs/rt_dsee
    python -m experiments.launch --config experiments/configs/peft.py:dsee_prune,rotten_tomatoes --workdir runs/rt_dsee_prune
    python -m experiments.launch --config experiments/configs/peft.py:hft,rotten_tomatoes --workdir runs/rt_hft

``full`` is plain fine-tuning (the baseline, ``peft.method='none'``); ``lightweight_emb`` /
``lightweight_last`` select ``peft.lightweight.variant``; ``dsee_prune`` is DSEE with 50%
magnitude pruning half-way through training. Options are ordinary config keys, e.g.
``--config.peft.lora.rank=16 --config.peft.lora.targets='attention/(query|key|value|out)/kernel$'``,
``--config.peft.hft.stage=steps --config.peft.hft.stage_steps=100``,
``--config.optim.learning_rate=5e-4``. A PEFT run writes ``WORKDIR/adapter`` (adapter-only
checkpoint) and, for mergeable methods (LoRA, DSEE, BitFit, lightweight, HFT), a merged HF
export in ``WORKDIR/export``. ``,runlocal`` / ``,tiny`` as in ``finetune_classification.py``.
"""

from __future__ import annotations

from experiments.configs import finetune_classification
from experiments.configs.args import parse_arg
from jaxbert.peft import METHODS

#: config name -> (peft.method, {option overrides by section})
VARIANTS: dict[str, tuple[str, dict]] = {
    "full": ("none", {}),
    "lora": ("lora", {}),
    "houlsby": ("houlsby", {}),
    "pfeiffer": ("pfeiffer", {}),
    "prefix": ("prefix", {}),
    "prompt": ("prompt", {}),
    "bitfit": ("bitfit", {}),
    "lightweight_emb": ("lightweight", {"lightweight": {"variant": "embeddings"}}),
    "lightweight_last": ("lightweight", {"lightweight": {"variant": "last_layer"}}),
    "dsee": ("dsee", {}),
    "dsee_prune": ("dsee", {"dsee": {"prune_sparsity": 0.5, "prune_at": 0.5}}),
    "hft": ("hft", {}),
}


def learning_rate(variant: str) -> float:
    method = VARIANTS[variant][0]
    return 1e-4 if method == "none" else METHODS[method].default_learning_rate


#: ``VARIANT,DATASET[,runlocal][,tiny]`` (a key of :data:`VARIANTS`, then finetune_classification's arguments)
ARGS = {"variant": "lora", **finetune_classification.ARGS}


def get_config(arg: str | None = None):
    a = parse_arg(arg, ARGS, positional=("variant", "dataset"),
                  choices={"variant": VARIANTS, "dataset": finetune_classification.DATASETS})
    variant = a.variant
    c = finetune_classification.build(a)
    method, overrides = VARIANTS[variant]
    c.peft.method = method
    for section, opts in overrides.items():
        for k, v in opts.items():
            c.peft[section][k] = v
    if not a.tiny:
        c.optim.learning_rate = learning_rate(variant)
    return c
