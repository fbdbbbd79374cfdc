r"""Turn a decoder LLM into a text embedder (issue #6): MNTP, LoRA contrastive and GRL runs of
SmolLM2-135M-Instruct (the ``smollm2`` asset, dequantized from its GGUF) on ``wordnet_defs``.

Run the LLM2Vec recipe, MNTP first, then contrastive training starting from the MNTP export
(or GRL instead of contrastive):

    python -m jaxbert.assets fetch smollm2
    python -m experiments.launch --config experiments/configs/llm_embedding.py:mntp \
        --workdir runs/smollm2_mntp
    python -m experiments.launch --config experiments/configs/llm_embedding.py:contrastive \
        --workdir runs/smollm2_contrastive --config.model.init_from=runs/smollm2_mntp/export
    python -m experiments.launch --config experiments/configs/llm_embedding.py:grl \
        --workdir runs/smollm2_grl --config.model.init_from=runs/smollm2_mntp/export

Smoke runs (a few steps, small evaluation sets; ``tiny`` = a random 2-layer Llama with a
word-level tokenizer built from the data, no download):

    python -m experiments.launch --config experiments/configs/llm_embedding.py:contrastive,tiny,runlocal \
        --workdir /tmp/llm_contrastive_tiny

Arguments (comma-separated): an objective, then flags.

  objectives  mntp         masked next-token prediction (bidirectional attention, 20% of tokens
                           corrupted, token i predicted at position i-1) on the corpus_20k
                           definitions (LLM2Vec's step 1; no query text)
              contrastive  InfoNCE (temperature 0.05) of the 4,000 wordnet_defs *train* queries
                           (with an instruction) against their definitions, in-batch negatives
                           plus one TF-IDF-mined hard negative per query (another sense of a word
                           of the sentence, from corpus_20k)
              grl          ULLME's GRL on the same tuples: contrastive + generation loss of the
                           positive given the query + KL(generation scores || embedding scores)
  flags       full         full fine-tuning instead of LoRA (rank 16 on every linear layer)
              focal        focal-style reweighting, gamma 2 (KaLM-Embedding-V2)
              mix          online hard-negative mixing: 4 synthetic + 2 query-mixed negatives
              reference_kl GRL with the reference's KL behaviour (computed, logged, no gradient)
              runlocal     a few steps on small evaluation sets (smoke run)
              tiny         random tiny Llama + word-level tokenizer (tests; no download)

Every run evaluates retrieval on the 1,000 *test* queries against corpus_20k (nDCG@10, MRR@10,
Recall@k; ``runlocal``: 50 queries against their documents + 300 others) every ``eval_every`` steps
into ``metrics.jsonl``, keeps the best checkpoint by ``wordnet/ndcg@10``, and exports
``WORKDIR/export``, an HF Llama directory with the tokenizer that
``jaxbert.SentenceEncoder.from_pretrained(export)`` loads with the run's pooling and attention
mode (queries: ``enc.encode(q, instruction=QUERY_INSTRUCTION)``). LoRA runs also write the
adapter-only checkpoint ``WORKDIR/adapter``.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from experiments.configs.args import parse_arg
from experiments.configs.common import base_config
from experiments.configs.sentence_embedding import _path_eval, _retrieval

OBJECTIVES = ("mntp", "contrastive", "grl")
FLAGS = ("full", "focal", "mix", "reference_kl", "runlocal", "tiny")
#: ``OBJECTIVE[,flag...]``
ARGS = {"objective": "contrastive", **{f: False for f in FLAGS}}
#: LLM2Vec-style query instruction (documents get none).
QUERY_INSTRUCTION = "Given an example sentence, retrieve the dictionary definition of the word it illustrates: "
#: LoRA targets: every linear layer of every block (LLM2Vec / the llm_embedder benchmark).
LORA_TARGETS = r"layer_\d+/(attention/(query|key|value|out)|mlp/(gate|up|down))/kernel$"
HARD_NEGATIVES = 1


def llm_config() -> ml_collections.ConfigDict:
    """Every key of the ``llm_embedding`` task (jaxbert/tasks/llm_embedding.py)."""
    c = ml_collections.ConfigDict()
    c.objective = "contrastive"  # mntp | contrastive | grl
    c.attention_mode = "bidirectional"  # the encoder's attention (mntp / grl need bidirectional)
    c.pooling = "mean"  # mean | weighted_mean | last_token | first_token
    c.add_eos = config_dict.placeholder(bool)  # None: only for last-token pooling
    c.query_instruction = ""
    c.doc_instruction = ""
    c.temperature = 0.05
    c.focal_gamma = 0.0  # KaLM focal weights (1 - p)^gamma; 0 = plain InfoNCE
    c.in_batch = True  # other queries' positives and hard negatives are negatives too
    c.num_negatives = 0  # hard negatives per record used (data.negative_field)
    c.word_vocab_size = 4000  # data.tokenizer='words': most frequent words kept
    c.max_train_records = config_dict.placeholder(int)  # use the first N records of data.train (None: all)
    c.mix = ml_collections.ConfigDict()  # online hard-negative mixing (jaxbert.objectives.llm_embedding)
    c.mix.num_synthetic = 0
    c.mix.num_query_mixed = 0
    c.mix.top_k = 8
    c.mix.max_query_mix = 0.5
    c.mntp = ml_collections.ConfigDict()
    c.mntp.mask_prob = 0.2  # LLM2Vec's mlm_probability for Llama
    c.mntp.replace_prob = 0.8
    c.mntp.random_prob = 0.1
    c.grl = ml_collections.ConfigDict()
    c.grl.gen_weight = 1.0
    c.grl.kl_weight = 1.0
    c.grl.kl_temperature = config_dict.placeholder(float)  # None: llm.temperature (ULLME)
    c.grl.kl_gradient = True  # False: the reference's behaviour (KL logged, no gradient)
    c.grl.gen_gradient = True
    c.grl.max_query_tokens = 32  # query tokens in the generation prompt
    c.grl.max_gen_length = 96  # query + candidate tokens per generation row
    return c


def tuples_file(num_negatives: int = HARD_NEGATIVES) -> str:
    """JSONL of ``{"anchor": train query, "positive": its definition, "negative": [k mined texts]}``.

    Derived from the data pack on first use and cached (``$JAXBERT_CACHE/derived/llm-tuples-v1``):
    the 4,000 train queries of ``wordnet_defs`` (never the test queries), each with ``num_negatives``
    TF-IDF-mined hard negatives from ``corpus_20k`` (:func:`jaxbert.data.features.llm.lexical_hard_negatives`).
    """
    import json

    from jaxbert.assets import cache_dir
    from jaxbert.data.features.llm import lexical_hard_negatives
    from jaxbert.data.features.pairs import retrieval_pairs, write_jsonl
    from jaxbert.data.sources import data_dir

    out = cache_dir() / "derived" / "llm-tuples-v1" / f"wordnet_hn{num_negatives}.jsonl"
    if out.is_file():
        return str(out)
    wn = data_dir() / "wordnet_defs"
    pairs = retrieval_pairs(wn / "queries_train.jsonl", wn / "qrels_train.jsonl", wn / "corpus_20k.jsonl")
    corpus = [json.loads(l)["text"] for l in (wn / "corpus_20k.jsonl").read_text().splitlines() if l.strip()]
    negs = lexical_hard_negatives([p["anchor"] for p in pairs], [p["positive"] for p in pairs], corpus,
                                  num_negatives, seed=0)
    write_jsonl([{**p, "negative": n} for p, n in zip(pairs, negs)], out)
    return str(out)


def get_config(arg: str | None = None):
    from jaxbert.data.sources import data_dir

    a = parse_arg(arg, ARGS, positional=("objective",), choices={"objective": OBJECTIVES})
    objective = a.objective
    if a.reference_kl and objective != "grl":
        raise ValueError("flag 'reference_kl' applies to the grl objective only")
    small, tiny = a.runlocal, a.tiny
    root = str(data_dir())

    c = base_config("llm_embedding")
    c.task = "llm_embedding"
    c.model.init_from = "asset:smollm2"
    c.model.preset = "smollm2-135m"
    c.llm = llm_config()
    c.llm.objective = objective
    c.data.anchor_field = "anchor"
    c.data.positive_field = "positive"
    c.data.negative_field = "negative"
    c.data.text_field = "text"
    c.data.max_length = 64
    c.data.eval_max_length = 96
    c.data.buckets = (16, 32, 48)  # train row lengths (each a compiled shape)
    c.data.eval_buckets = (16, 32, 64)  # eval row lengths (+ eval_max_length)

    c.evals = ml_collections.ConfigDict()
    c.evals.wordnet = _retrieval(root, 300 if small else None, 50 if small else None)
    c.evals.lee = _path_eval("lee", f"{root}/lee")
    c.evals.simlex = _path_eval("word_similarity", f"{root}/word_similarity/simlex999.jsonl")
    c.eval_splits = ("wordnet",)
    c.checkpoint.best_metric = "wordnet/ndcg@10"
    c.checkpoint.best_mode = "max"

    c.peft.method = "lora"
    c.peft.lora.targets = LORA_TARGETS
    c.peft.lora.rank = 16
    c.peft.lora.alpha = 32.0
    c.optim.weight_decay = 0.0
    c.optim.warmup_ratio = 0.1
    c.eval_batch_size = 64
    c.log_every = 10

    if objective == "mntp":
        c.data.train = f"{root}/wordnet_defs/corpus_20k.jsonl"
        c.batch_size = 32
        c.num_train_steps = 1000  # LLM2Vec: 1,000 MNTP steps, batch 32
        c.optim.learning_rate = 1e-4
        c.eval_every = 250
    else:
        c.data.train = tuples_file(HARD_NEGATIVES)
        c.llm.num_negatives = HARD_NEGATIVES
        c.llm.query_instruction = QUERY_INSTRUCTION
        c.batch_size = 64 if objective == "contrastive" else 32
        c.num_epochs = 2.0 if objective == "contrastive" else 1.0
        c.optim.learning_rate = 2e-4
        c.eval_every = 50
    if a.full:
        c.peft.method = "none"
        c.optim.learning_rate = 2e-5
    if a.focal:
        c.llm.focal_gamma = 2.0
    if a.mix:
        c.llm.mix.num_synthetic = 4
        c.llm.mix.num_query_mixed = 2
    if a.reference_kl:
        c.llm.grl.kl_gradient = False
        c.llm.grl.gen_gradient = False
    if tiny:
        c.model.init_from = None
        c.model.preset = "llama-tiny"
        c.data.tokenizer = "words"
        c.optim.learning_rate = 1e-2 if c.peft.method != "none" else 3e-3
    if small:
        c.num_train_steps = 4
        c.batch_size = 8
        c.eval_batch_size = 32
        c.eval_every = 2
        c.log_every = 1
        c.tensorboard = False
        c.llm.grl.max_gen_length = 64
        c.llm.max_train_records = 1000
        c.data.buckets = None  # one compiled shape for training and one for evaluation
        c.data.eval_max_length = 64
        c.data.eval_buckets = ()
    return c
