r"""Train a sentence-embedding model (bi-encoder) on real pairs: MNRL / GradCache / Matryoshka,
Mirror-BERT, CoSENT; evaluate retrieval (nDCG@10, MRR@10, Recall@k) and similarity (Spearman);
export a sentence-transformers directory.

Run (all-MiniLM-L6-v2, MNRL on the 4,000 wordnet_defs train queries -> their definitions,
evaluated on the 1,000 test queries against corpus_20k, plus Lee / SimLex / WordSim Spearman):

    python -m experiments.launch \
        --config experiments/configs/sentence_embedding.py:wordnet \
        --workdir runs/wordnet_mnrl

Arguments (comma-separated): a dataset, then flags.

  datasets  wordnet      wordnet_defs query -> definition pairs (MNRL)
            dialog       movie_dialog statement -> reply pairs (MNRL)
            chatterbot   chatterbot_qa question -> answer pairs (MNRL)
            mirror       Mirror-BERT: identity pairs of wordnet definitions, span masking +
                         dropout, NT-Xent (tau 0.04); evaluated on Lee / SimLex / WordSim
            mirror_words lexical Mirror-BERT: identity pairs of single words (derived wordnet_pos
                         train split), dropout only, NT-Xent (tau 0.2); SimLex / WordSim
            simlex       CoSENT on SimLex-999 train pairs (derived 699/150/150 split)
            cross_encoder  a reranker: MiniLM + classifier on (query, definition) pairs, one random
                         negative per positive (the classification task); rerank the bi-encoder's
                         top-k with jaxbert.eval.retrieval.cross_encoder_scorer + rerank
  flags     gradcache    GradCache (64-pair chunks) with a 256-pair contrastive batch
            matryoshka   Matryoshka loss at 384/128/64 dims
            symmetric    symmetric InfoNCE (query->doc and doc->query, per-direction)
            runlocal     a few steps on small eval sets (smoke run)
            tiny         random 2-layer BERT (bert-tiny) with the MiniLM tokenizer

The export in ``<workdir>/export`` loads with ``sentence_transformers.SentenceTransformer``
and ``jaxbert.SentenceEncoder.from_pretrained``.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from experiments.configs.common import base_config

DATASETS = ("wordnet", "dialog", "chatterbot", "mirror", "mirror_words", "simlex", "cross_encoder")
FLAGS = ("gradcache", "matryoshka", "symmetric", "runlocal", "tiny")


def contrastive_config() -> ml_collections.ConfigDict:
    """Every key of the ``contrastive`` task (jaxbert/tasks/contrastive.py)."""
    c = ml_collections.ConfigDict()
    c.objective = "mnrl"  # mnrl | ntxent | cosent | cosine | softmax | dse
    c.scale = 20.0  # 1 / temperature (sentence-transformers' default for MNRL and CoSENT)
    c.directions = ("query_to_doc",)
    c.partition_mode = "joint"
    c.hardness_mode = config_dict.placeholder(str)  # in_batch_negatives | hard_negatives | all_negatives
    c.hardness_strength = 0.0
    c.matryoshka_dims = ()
    c.matryoshka_weights = ()
    c.grad_cache_chunk = 0  # pairs per GradCache chunk (0: off)
    c.gather = "global"  # global (jit over the global batch) | shard_map (explicit all-gather)
    c.pooling = config_dict.placeholder(str)  # None: the model directory's pooling (else mean)
    c.normalize = True
    c.mirror_span = 0  # Mirror-BERT span length in characters (0: off)
    c.labels = ()  # softmax / DSE classes
    c.pair_features = ("u", "v", "abs_diff")
    c.dse_alpha = 1.0
    c.num_teacher_logits = 1
    c.domains = ()  # mixture-of-experts: expert table (domain names)
    c.eval_domain = 0
    c.moe = ml_collections.ConfigDict()
    c.moe.layers = ()  # layers whose FFN becomes experts (() = all)
    c.moe.router = "learned"
    c.moe.router_loss_weight = 0.1
    return c


def _retrieval(data_root: str, corpus_limit=None, query_limit=None) -> ml_collections.ConfigDict:
    r = ml_collections.ConfigDict()
    r.kind = "retrieval"
    r.queries = f"{data_root}/wordnet_defs/queries_test.jsonl"
    r.corpus = f"{data_root}/wordnet_defs/corpus_20k.jsonl"
    r.qrels = f"{data_root}/wordnet_defs/qrels_test.jsonl"
    r.corpus_limit = config_dict.placeholder(int)
    r.query_limit = config_dict.placeholder(int)
    r.corpus_limit, r.query_limit = corpus_limit, query_limit
    return r


def _path_eval(kind: str, path: str) -> ml_collections.ConfigDict:
    e = ml_collections.ConfigDict()
    e.kind, e.path = kind, path
    return e


def pair_file(name: str) -> str:
    """Pair JSONL for a dataset, derived from the data pack on first use (cached)."""
    import gzip
    import json
    from pathlib import Path

    from jaxbert.assets import cache_dir
    from jaxbert.data.pair_pipeline import retrieval_pairs, write_jsonl
    from jaxbert.data.sources import data_dir

    root = data_dir()
    wn = root / "wordnet_defs"
    out = cache_dir() / "derived" / "pairs-v1" / f"{name}.jsonl"
    if out.is_file():
        return str(out)
    if name == "wordnet":
        rows = retrieval_pairs(wn / "queries_train.jsonl", wn / "qrels_train.jsonl", wn / "corpus_20k.jsonl")
    elif name == "dialog":
        with gzip.open(root / "movie_dialog" / "pairs.jsonl.gz", "rt", encoding="utf-8") as f:
            rows = [json.loads(l) for l in f if l.strip()]
    elif name == "chatterbot":
        rows = [{"anchor": r["question"], "positive": r["answer"], "domain": r["topic"]}
                for r in map(json.loads, Path(root / "chatterbot_qa" / "pairs.jsonl").read_text().splitlines()) if r]
    elif name in ("wordnet_cross_train", "wordnet_cross_test"):  # cross-encoder: positive + 1 random negative
        import random
        split = name.rsplit("_", 1)[1]
        pairs = retrieval_pairs(wn / f"queries_{split}.jsonl", wn / f"qrels_{split}.jsonl", wn / "corpus_20k.jsonl")
        docs = [json.loads(l)["text"] for l in (wn / "corpus_20k.jsonl").read_text().splitlines()]
        rnd = random.Random(0)
        rows = []
        for p in pairs:
            neg = rnd.choice(docs)
            while neg == p["positive"]:
                neg = rnd.choice(docs)
            rows += [{"text": p["anchor"], "pair": p["positive"], "label": 1},
                     {"text": p["anchor"], "pair": neg, "label": 0}]
    elif name == "mirror":  # wordnet definitions (the text after "lemmas: "), 10k as in Mirror-BERT
        texts = [json.loads(l)["text"] for l in (wn / "corpus_20k.jsonl").read_text().splitlines()]
        rows = [{"text": t} for t in texts[:10000]]
    else:
        raise ValueError(f"no pair file for {name!r}")
    write_jsonl(rows, out)
    return str(out)


def get_config(arg: str = "wordnet"):
    from jaxbert.data.sources import data_dir

    parts = [p for p in (arg or "wordnet").split(",") if p]
    name, flags = parts[0], set(parts[1:])
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {list(DATASETS)}")
    unknown = flags - set(FLAGS)
    if unknown:
        raise ValueError(f"unknown config flags {sorted(unknown)}; known: {list(FLAGS)}")
    root = str(data_dir())
    c = base_config()
    c.task = "contrastive"
    c.model.init_from = "asset:minilm"
    c.contrastive = contrastive_config()
    c.data.anchor_field = "anchor"
    c.data.positive_field = "positive"
    c.data.negative_field = "negative"
    c.data.score_field = config_dict.placeholder(str)
    c.data.domain_field = config_dict.placeholder(str)
    c.data.teacher_field = config_dict.placeholder(str)
    c.data.eval_max_length = 128
    c.data.max_length = 64
    c.data.buckets = (16, 32, 48)
    small = "runlocal" in flags
    c.evals = ml_collections.ConfigDict()
    c.evals.wordnet = _retrieval(root, 2000 if small else None, 100 if small else None)
    c.evals.lee = _path_eval("lee", f"{root}/lee")
    c.evals.simlex = _path_eval("word_similarity", f"{root}/word_similarity/simlex999.jsonl")
    c.evals.wordsim = _path_eval("word_similarity", f"{root}/word_similarity/wordsim353.jsonl")
    c.evals.trec_probe = ml_collections.ConfigDict()  # linear probe on frozen embeddings (not run by default)
    c.evals.trec_probe.kind = "probe"
    c.evals.trec_probe.train, c.evals.trec_probe.test = f"{root}/trec/train.jsonl", f"{root}/trec/test.jsonl"
    c.evals.trec_probe.label_field = "coarse_label"
    c.evals.trec_probe.text_field = "text"
    c.evals.trec_probe.train_limit = 2000 if not small else 200
    c.evals.trec_probe.test_limit = config_dict.placeholder(int)
    c.eval_splits = ("wordnet", "lee", "simlex", "wordsim")
    c.checkpoint.best_metric = "wordnet/ndcg@10"
    c.checkpoint.best_mode = "max"
    c.batch_size = 64
    c.eval_batch_size = 128
    c.num_epochs = 1.0
    c.optim.learning_rate = 2e-5
    c.optim.warmup_ratio = 0.1
    c.log_every = 10

    if name in ("wordnet", "dialog", "chatterbot"):
        c.data.train = pair_file(name)
    elif name == "mirror":
        c.data.train = pair_file("mirror")
        c.data.anchor_field = "text"
        c.data.positive_field = config_dict.placeholder(str)
        c.contrastive.objective = "ntxent"
        c.contrastive.scale = 25.0  # tau = 0.04 (Mirror-BERT, sentences)
        c.contrastive.mirror_span = 5
        c.contrastive.pooling = "mean"
        c.batch_size = 128  # the reference uses 200 on GPUs
        c.data.max_length = 50
        c.data.buckets = (16, 32, 50)
        c.eval_splits = ("lee", "simlex", "wordsim")
        c.checkpoint.best_metric = "lee/spearman"
    elif name == "mirror_words":  # lexical Mirror-BERT: words, dropout as the only augmentation, tau 0.2
        from jaxbert.data.derived import derived_dataset
        c.data.train = str(derived_dataset("wordnet_pos") / "train.jsonl")
        c.data.anchor_field = "text"
        c.data.positive_field = config_dict.placeholder(str)
        c.contrastive.objective = "ntxent"
        c.contrastive.scale = 5.0  # tau = 0.2 (Mirror-BERT, words)
        c.contrastive.pooling = "mean"
        c.batch_size = 128
        c.data.max_length = 16
        c.data.buckets = None
        c.eval_splits = ("simlex", "wordsim")
        c.checkpoint.best_metric = "simlex/spearman"
    elif name == "simlex":
        from jaxbert.data.derived import derived_dataset
        folder = derived_dataset("simlex999")
        c.data.train = str(folder / "train.jsonl")
        c.data.anchor_field, c.data.positive_field, c.data.score_field = "word1", "word2", "score"
        c.contrastive.objective = "cosent"
        c.data.max_length = 16
        c.data.buckets = None
        c.batch_size = 32
        c.num_epochs = 4.0
        c.evals.simlex_test = _path_eval("pairs", str(folder / "test.jsonl"))
        c.evals.simlex_test.text1, c.evals.simlex_test.text2, c.evals.simlex_test.score = "word1", "word2", "score"
        c.eval_splits = ("simlex_test", "wordsim")
        c.checkpoint.best_metric = "simlex_test/spearman"
    elif name == "cross_encoder":  # reranker: (query, definition) -> relevant?, the classification task
        c.task = "classification"
        c.data.train, c.data.test = pair_file("wordnet_cross_train"), pair_file("wordnet_cross_test")
        c.data.validation = None
        c.data.text_field, c.data.pair_field, c.data.label_field, c.data.labels = "text", "pair", "label", (0, 1)
        c.data.max_length = 96
        c.data.buckets = (32, 64, 96)
        c.batch_size = 32
        c.eval_splits = ("test",)
        c.checkpoint.best_metric = "test/accuracy"
    if "gradcache" in flags:
        c.batch_size = 256
        c.contrastive.grad_cache_chunk = 64
    if "matryoshka" in flags:
        c.contrastive.matryoshka_dims = (384, 128, 64)
    if "symmetric" in flags:
        c.contrastive.directions = ("query_to_doc", "doc_to_query")
        c.contrastive.partition_mode = "per_direction"
    if "tiny" in flags:
        c.model.init_from = None
        c.model.preset = "bert-tiny"
        c.data.tokenizer = "asset:minilm"
        c.optim.learning_rate = 1e-3
        if c.contrastive.matryoshka_dims:
            c.contrastive.matryoshka_dims = (128, 64, 32)
    if small:
        c.num_train_steps = 4
        c.batch_size = 16 if "gradcache" not in flags else 32
        if c.contrastive.grad_cache_chunk:
            c.contrastive.grad_cache_chunk = 8
        c.eval_batch_size = 64
        c.log_every = 2
        c.tensorboard = False
    return c
