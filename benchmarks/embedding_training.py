r"""Sentence-embedding training on real data (all-MiniLM-L6-v2 as the base): zero-shot vs fine-tuned.

Rows (each trained with the engine, ``jaxbert.train.loop.Trainer``, from
``experiments/configs/sentence_embedding.py``):

* ``zero_shot``            the pretrained MiniLM;
* ``mnrl_gradcache``       MNRL with GradCache (``wordnet,gradcache``: 256-pair batches in 64-pair chunks)
                           on the 4,000 wordnet_defs train queries -> definitions;
* ``mnrl_matryoshka``      the same with the Matryoshka loss at 384/128/64 dims;
* ``mirror``               Mirror-BERT (``mirror``): 10k wordnet definitions, span masking + dropout;
* ``cross_encoder_rerank`` a cross-encoder (``cross_encoder``: MiniLM + classifier on (query, definition)
                           pairs, one random negative per positive) reranks the zero-shot bi-encoder's
                           top ``--rerank-k`` candidates: nDCG@10 / MRR@10 before and after.

Metrics: nDCG@10 / MRR@10 / Recall@10 of the 1,000 wordnet_defs *test* queries against
``corpus_20k`` at 384, 128 and 64 dims (truncated + renormalised embeddings), Lee document
similarity Spearman, SimLex-999 and WordSim-353 Spearman. The baseline (zero-shot) is measured
in the same process.

Usage::

    python benchmarks/embedding_training.py                      # full (slow on a 2-core CPU)
    python benchmarks/embedding_training.py --steps 50 --corpus-limit 5000 --rows zero_shot,mnrl_gradcache

"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.ensure_repo_on_path()

ROWS = ("zero_shot", "mnrl_gradcache", "mnrl_matryoshka", "mirror", "cross_encoder_rerank")
CONFIG_ARGS = {"mnrl_gradcache": "wordnet,gradcache", "mnrl_matryoshka": "wordnet,gradcache,matryoshka",
               "mirror": "mirror"}
DIMS = (384, 128, 64)


def evaluate(task, params, sets, corpus_limit) -> dict:
    from jaxbert.eval import retrieval as R

    out = {}
    wn = sets["wordnet"]
    emb = task.embed_texts(params, wn.texts, batch_size=128)
    nq = len(wn.queries)
    for d in DIMS:
        e = emb[:, :d]
        scores = R.retrieval_scores(e[:nq], e[nq:], wn.query_ids, wn.doc_ids, wn.qrels, recall_k=(10,))
        out.update({f"{k}_{d}d": v for k, v in scores.items() if k != "num_queries"})
    for name in ("lee", "simlex", "wordsim"):
        s = sets[name]
        out[f"{name}_spearman"] = s.metrics(task.embed_texts(params, s.texts, batch_size=128))["spearman"]
    out["num_queries"] = nq
    out["num_docs"] = len(wn.docs)
    return out


def rerank_row(bi_task, wn, args) -> dict:
    """Train the cross-encoder config, rerank the zero-shot bi-encoder's top-k test candidates."""
    import numpy as np

    from experiments.configs.sentence_embedding import get_config
    from jaxbert.eval import retrieval as R
    from jaxbert.train.loop import Trainer

    cfg = get_config("cross_encoder")
    cfg.seed = args.seed
    cfg.export_hf = False
    cfg.progress = False
    if args.steps:
        cfg.num_train_steps = args.steps
    with tempfile.TemporaryDirectory() as wd, common.Timer() as t:
        common.say("training the cross-encoder (cross_encoder)")
        trainer = Trainer(cfg, wd)
        summary = trainer.run()
        params = trainer.final_state.params
    emb = bi_task.embed_texts(bi_task.pretrained_params, wn.texts, batch_size=128)
    nq = len(wn.queries)
    first, _ = R.exact_search(emb[:nq], emb[nq:], k=args.rerank_k)
    score = R.cross_encoder_scorer(trainer.task.model, params, trainer.task.tokenizer, wn.queries, wn.docs,
                                   max_length=cfg.data.max_length, batch_size=64)
    second = R.rerank(first, score)

    def metrics(ranked):
        ids = np.asarray(wn.doc_ids)
        out = {"ndcg@10": 0.0, "mrr@10": 0.0}
        for qi, row in enumerate(ranked):
            rel = wn.qrels[wn.query_ids[qi]]
            out["ndcg@10"] += R.ndcg_at_k(ids[row].tolist(), rel, 10) / nq
            out["mrr@10"] += R.mrr_at_k(ids[row].tolist(), rel, 10) / nq
        return out

    return {"bi_encoder": metrics(first), "reranked": metrics(second), "rerank_k": args.rerank_k,
            "cross_encoder_test": summary["eval"].get("test"), "train_seconds": t.seconds, "steps": summary["step"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--steps", type=int, default=0, help="train steps per row (0: one epoch)")
    p.add_argument("--corpus-limit", type=int, default=0, help="docs besides the relevant ones (0: all corpus_20k)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rerank-k", type=int, default=20)
    p.add_argument("--out-dir", default=None, help="folder for embedding_training.json (default benchmarks/results)")
    args = p.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ROWS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; known: {ROWS}")

    from experiments.configs.sentence_embedding import get_config
    from jaxbert.tasks import get_task
    from jaxbert.tasks.contrastive import load_eval_set
    from jaxbert.train.loop import Trainer

    base_cfg = get_config("wordnet")
    if args.corpus_limit:
        base_cfg.evals.wordnet.corpus_limit = args.corpus_limit
    sets = {n: load_eval_set(n, base_cfg.evals[n]) for n in ("wordnet", "lee", "simlex", "wordsim")}
    results = {"machine": common.machine(), "started": common.now_iso(), "args": vars(args), "rows": {}}
    base_task = get_task("contrastive")(base_cfg)
    if "zero_shot" in rows:
        common.say("zero-shot MiniLM")
        results["rows"]["zero_shot"] = evaluate(base_task, base_task.pretrained_params, sets, args.corpus_limit)
    for row in rows:
        if row == "zero_shot":
            continue
        if row == "cross_encoder_rerank":
            results["rows"][row] = rerank_row(base_task, sets["wordnet"], args)
            continue
        cfg = get_config(CONFIG_ARGS[row])
        cfg.seed = args.seed
        cfg.eval_splits = ()  # evaluated here, on the same sets for every row
        cfg.checkpoint.best_metric = ""
        cfg.checkpoint.keep_best = 0
        cfg.export_hf = False
        cfg.progress = False
        if args.steps:
            cfg.num_train_steps = args.steps
        with tempfile.TemporaryDirectory() as wd, common.Timer() as t:
            common.say(f"training {row} ({CONFIG_ARGS[row]})")
            trainer = Trainer(cfg, wd)
            summary = trainer.run()
            metrics = evaluate(trainer.task, trainer.final_state.params, sets, args.corpus_limit)
        metrics.update(train_seconds=t.seconds, steps=summary["step"], batch_size=cfg.batch_size,
                       config=CONFIG_ARGS[row])
        results["rows"][row] = metrics
    results["finished"] = common.now_iso()
    common.write_result("embedding_training", results, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
