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
            simlex_cosine  cosine-similarity regression (MSE of cos(u, v) against the gold score)
                         on the same SimLex-999 train pairs, scores rescaled 0-10 -> 0-1
            softmax      SBERT SoftmaxLoss: a classifier over [u, v, |u - v|] on labelled
                         (wordnet train query, synset text) pairs, 3 classes: definition (its own
                         synset, 4,000), other_sense (another synset sharing a lemma with it, a
                         hard negative, 3,226), unrelated (a random synset, 4,000)
            cross_encoder  a reranker: MiniLM + classifier on (query, definition) pairs, one random
                         negative per positive (the classification task); rerank the bi-encoder's
                         top-k with jaxbert.eval.retrieval.cross_encoder_scorer + rerank
            dse          Distilled Sentence Embedding: a bi-encoder student (pair head over
                         [u, v, u * v, |u - v|]) regresses the cross_encoder teacher's logits on the
                         same (query, definition, relevant?) pairs: 0.5 CE + 0.5 MSE
                         (contrastive.dse_alpha). The teacher is data.teacher_dir (default
                         runs/wordnet_cross/export, the cross_encoder run below); its logits are
                         computed once before training and cached (teacher_scored_pairs)
            moe          mixture-of-experts embedder, MNRL, one expert FFN per domain in every
                         layer (initialised from MiniLM's FFN), routing enforced by the pair's
                         `domain`: wordnet (4,000 query -> definition), dialog (4,000 sampled
                         movie_dialog turns), chatterbot (1,177 QA pairs); learned router trained
                         alongside; evaluated through the wordnet expert (contrastive.eval_domain,
                         -1 = the learned router); the export holds one sentence-transformers
                         directory per domain (<workdir>/export/<domain>)
  flags     gradcache    GradCache (64-pair chunks) with a 256-pair contrastive batch
            matryoshka   Matryoshka loss at 384/128/64 dims
            symmetric    symmetric InfoNCE (query->doc and doc->query, per-direction)
            runlocal     a few steps on small eval sets (smoke run)
            tiny         random 2-layer BERT (bert-tiny) with the MiniLM tokenizer

More runs, one per objective (a pair file is derived from the data pack on first use and
cached under ``$JAXBERT_CACHE/derived/pairs-v1``):

    # cosine-similarity regression and SBERT softmax
    python -m experiments.launch --config experiments/configs/sentence_embedding.py:simlex_cosine \
        --workdir runs/simlex_cosine
    python -m experiments.launch --config experiments/configs/sentence_embedding.py:softmax \
        --workdir runs/wordnet_softmax
    # DSE: 1) the cross-encoder teacher, 2) the bi-encoder student (scores the pairs with
    # runs/wordnet_cross/export first; another teacher: --config.data.teacher_dir=DIR; pairs
    # already scored, e.g. by jaxbert.tasks.contrastive.write_teacher_logits:
    # --config.data.teacher_dir= --config.data.train=scored.jsonl)
    python -m experiments.launch --config experiments/configs/sentence_embedding.py:cross_encoder \
        --workdir runs/wordnet_cross
    python -m experiments.launch --config experiments/configs/sentence_embedding.py:dse \
        --workdir runs/wordnet_dse
    # mixture-of-experts embedder with domain routing
    python -m experiments.launch --config experiments/configs/sentence_embedding.py:moe \
        --workdir runs/moe_embedder

A smoke run of any of them: append ``,tiny,runlocal``. The dse student still needs a teacher;
any two-label sequence-classification export will do (it scores the pairs with its own
tokenizer), e.g. a ``cross_encoder,tiny,runlocal`` run:

    python -m experiments.launch --config experiments/configs/sentence_embedding.py:cross_encoder,tiny,runlocal \
        --workdir runs/cross_tiny
    python -m experiments.launch --config experiments/configs/sentence_embedding.py:dse,tiny,runlocal \
        --workdir runs/dse_tiny --config.data.teacher_dir=runs/cross_tiny/export

The export in ``<workdir>/export`` loads with ``sentence_transformers.SentenceTransformer``
and ``jaxbert.SentenceEncoder.from_pretrained`` (softmax / DSE: the encoder only; the pair head
is a training device, as in SBERT).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from experiments.configs.args import parse_arg
from experiments.configs.common import base_config
from experiments.configs.variants import smoke_run, tiny_bert

DATASETS = ("wordnet", "dialog", "chatterbot", "mirror", "mirror_words", "simlex", "simlex_cosine", "softmax",
            "cross_encoder", "dse", "moe")
SOFTMAX_LABELS = ("definition", "other_sense", "unrelated")
MOE_DOMAINS = ("wordnet", "dialog", "chatterbot")
DSE_TEACHER = "runs/wordnet_cross/export"  # the cross_encoder run of the module docstring
FLAGS = ("gradcache", "matryoshka", "symmetric", "runlocal", "tiny")
#: ``DATASET[,flag...]``
ARGS = {"dataset": "wordnet", **{f: False for f in FLAGS}}


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


def retrieval_eval(queries: str, corpus: str, qrels: str, corpus_limit=None, query_limit=None) -> ml_collections.ConfigDict:
    """An ``evals`` entry of kind ``retrieval`` (exact cosine search; nDCG@10, MRR@10, Recall@k)."""
    r = ml_collections.ConfigDict()
    r.kind = "retrieval"
    r.queries, r.corpus, r.qrels = queries, corpus, qrels
    r.corpus_limit = config_dict.placeholder(int)
    r.query_limit = config_dict.placeholder(int)
    r.corpus_limit, r.query_limit = corpus_limit, query_limit
    return r


def _retrieval(data_root: str, corpus_limit=None, query_limit=None) -> ml_collections.ConfigDict:
    """The wordnet_defs test retrieval set (1,000 queries against corpus_20k)."""
    wn = f"{data_root}/wordnet_defs"
    return retrieval_eval(f"{wn}/queries_test.jsonl", f"{wn}/corpus_20k.jsonl", f"{wn}/qrels_test.jsonl",
                          corpus_limit, query_limit)


def _path_eval(kind: str, path: str) -> ml_collections.ConfigDict:
    e = ml_collections.ConfigDict()
    e.kind, e.path = kind, path
    return e


def _simlex_evals(c: ml_collections.ConfigDict, folder) -> None:
    """Evaluate on the derived SimLex-999 test pairs (+ WordSim), keep the best by SimLex Spearman."""
    c.evals.simlex_test = _path_eval("pairs", str(folder / "test.jsonl"))
    c.evals.simlex_test.text1, c.evals.simlex_test.text2, c.evals.simlex_test.score = "word1", "word2", "score"
    c.eval_splits = ("simlex_test", "wordsim")
    c.checkpoint.best_metric = "simlex_test/spearman"


def pair_file(name: str) -> str:
    """Pair JSONL for a dataset, derived from the data pack on first use (cached)."""
    import gzip
    import json
    from pathlib import Path

    from jaxbert.assets import cache_dir
    from jaxbert.data.features.pairs import retrieval_pairs, write_jsonl
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
    elif name == "wordnet_senses":  # SBERT softmax: (query, synset text, definition | other_sense | unrelated)
        rows = _sense_pairs(wn)
    elif name == "simlex_cosine":  # cosine regression targets: SimLex 0-10 -> 0-1
        from jaxbert.data.derived import derived_dataset
        rows = [{"anchor": r["word1"], "positive": r["word2"], "score": float(r["score"]) / 10.0}
                for r in map(json.loads, (derived_dataset("simlex999") / "train.jsonl").read_text().splitlines()) if r]
    elif name == "moe_mix":  # three domains for the mixture-of-experts embedder
        import random
        rows = [dict(r, domain="wordnet") for r in retrieval_pairs(
            wn / "queries_train.jsonl", wn / "qrels_train.jsonl", wn / "corpus_20k.jsonl")]
        with gzip.open(root / "movie_dialog" / "pairs.jsonl.gz", "rt", encoding="utf-8") as f:
            dialog = [json.loads(l) for l in f if l.strip()]
        rows += [{"anchor": r["anchor"], "positive": r["positive"], "domain": "dialog"}
                 for r in random.Random(0).sample(dialog, 4000)]
        rows += [{"anchor": r["question"], "positive": r["answer"], "domain": "chatterbot"}
                 for r in map(json.loads, Path(root / "chatterbot_qa" / "pairs.jsonl").read_text().splitlines()) if r]
    elif name == "mirror":  # wordnet definitions (the text after "lemmas: "), 10k as in Mirror-BERT
        texts = [json.loads(l)["text"] for l in (wn / "corpus_20k.jsonl").read_text().splitlines()]
        rows = [{"text": t} for t in texts[:10000]]
    else:
        raise ValueError(f"no pair file for {name!r}")
    write_jsonl(rows, out)
    return str(out)


def _sense_pairs(wn) -> list[dict]:
    """Labelled pairs for the SBERT softmax objective, from the wordnet_defs train queries.

    Per train query (an example sentence) and its synset ``d`` (``"lemma, lemma: definition"``
    in the full 117,659-synset corpus): ``definition`` = ``d``; ``other_sense`` = a random other
    synset listing one of ``d``'s lemmas (another sense of the same word: a hard negative; none
    when every lemma of ``d`` is monosemous, 774 of 4,000 queries); ``unrelated`` = a random
    synset. ``random.Random(0)``; rows in query order (the training iterator shuffles).
    """
    import gzip
    import json
    import random
    from collections import defaultdict

    from jaxbert.data.features.pairs import retrieval_pairs

    with gzip.open(wn / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        corpus = [json.loads(l) for l in f if l.strip()]
    text_of = {d["id"]: d["text"] for d in corpus}
    id_of = {d["text"]: d["id"] for d in corpus}
    senses: dict[str, list[str]] = defaultdict(list)
    for d in corpus:
        for lemma in d["text"].split(": ", 1)[0].split(", "):
            senses[lemma.lower()].append(d["id"])
    ids = sorted(text_of)
    rnd = random.Random(0)
    rows = []
    for p in retrieval_pairs(wn / "queries_train.jsonl", wn / "qrels_train.jsonl", wn / "corpus_20k.jsonl"):
        own = id_of[p["positive"]]
        lemmas = p["positive"].split(": ", 1)[0].split(", ")
        others = sorted({o for lemma in lemmas for o in senses[lemma.lower()]} - {own})
        rows.append({"anchor": p["anchor"], "positive": p["positive"], "label": "definition"})
        if others:
            rows.append({"anchor": p["anchor"], "positive": text_of[rnd.choice(others)], "label": "other_sense"})
        neg = rnd.choice(ids)
        while neg == own:
            neg = rnd.choice(ids)
        rows.append({"anchor": p["anchor"], "positive": text_of[neg], "label": "unrelated"})
    return rows


def get_config(arg: str | None = None):
    from jaxbert.data.sources import data_dir

    a = parse_arg(arg, ARGS, positional=("dataset",), choices={"dataset": DATASETS})
    name = a.dataset
    root = str(data_dir())
    c = base_config("contrastive")
    c.task = "contrastive"
    c.model.init_from = "asset:minilm"
    c.contrastive = contrastive_config()
    c.data.anchor_field = "anchor"
    c.data.positive_field = "positive"
    c.data.negative_field = "negative"
    c.data.score_field = config_dict.placeholder(str)
    c.data.domain_field = config_dict.placeholder(str)
    c.data.teacher_field = config_dict.placeholder(str)
    c.data.teacher_dir = config_dict.placeholder(str)  # DSE: cross-encoder that scores data.train first
    c.data.teacher_max_length = 96
    c.data.eval_max_length = 128
    c.data.max_length = 64
    c.data.buckets = (16, 32, 48)
    small = a.runlocal
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
        _simlex_evals(c, folder)
    elif name == "simlex_cosine":
        from jaxbert.data.derived import derived_dataset
        folder = derived_dataset("simlex999")
        c.data.train = pair_file("simlex_cosine")
        c.data.score_field = "score"
        c.data.negative_field = None
        c.contrastive.objective = "cosine"
        c.data.max_length = 16
        c.data.buckets = None
        c.batch_size = 32
        c.num_epochs = 4.0
        _simlex_evals(c, folder)
    elif name == "softmax":  # SBERT SoftmaxLoss on labelled (query, synset) pairs
        c.data.train = pair_file("wordnet_senses")
        c.data.negative_field = None
        c.data.label_field = "label"
        c.contrastive.objective = "softmax"
        c.contrastive.labels = SOFTMAX_LABELS
        c.contrastive.pair_features = ("u", "v", "abs_diff")
        c.batch_size = 32  # 16 in SBERT; 32 on CPU for throughput
        c.data.max_length = 96
        c.data.buckets = (32, 64, 96)
    elif name == "dse":  # student of the cross_encoder teacher on the same pairs
        c.data.train = pair_file("wordnet_cross_train")
        c.data.anchor_field, c.data.positive_field, c.data.negative_field = "text", "pair", None
        c.data.label_field = "label"
        c.data.teacher_field = "teacher"
        c.data.teacher_dir = DSE_TEACHER
        c.contrastive.objective = "dse"
        c.contrastive.labels = (0, 1)  # the cross_encoder's label order: logit 1 = relevant
        c.contrastive.dse_alpha = 0.5
        c.contrastive.pair_features = ("u", "v", "mul", "abs_diff")  # DSE's siamese head features
        c.batch_size = 32
        c.data.max_length = 96
        c.data.buckets = (32, 64, 96)
    elif name == "moe":  # one expert per domain, enforced routing
        c.data.train = pair_file("moe_mix")
        c.data.domain_field = "domain"
        c.contrastive.domains = MOE_DOMAINS
        c.contrastive.eval_domain = 0  # the wordnet expert embeds the retrieval / similarity sets
        c.contrastive.moe.layers = ()  # every layer
        c.contrastive.moe.router = "learned"
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
    if a.gradcache:
        c.batch_size = 256
        c.contrastive.grad_cache_chunk = 64
    if a.matryoshka:
        c.contrastive.matryoshka_dims = (384, 128, 64)
    if a.symmetric:
        c.contrastive.directions = ("query_to_doc", "doc_to_query")
        c.contrastive.partition_mode = "per_direction"
    if a.tiny:
        tiny_bert(c)
        if c.contrastive.matryoshka_dims:
            c.contrastive.matryoshka_dims = (128, 64, 32)
    if small:
        smoke_run(c, steps=4, batch_size=16 if not a.gradcache else 32, eval_batch_size=64)
        if c.contrastive.grad_cache_chunk:
            c.contrastive.grad_cache_chunk = 8
        c.tensorboard = False
    return c
