"""SmolLM2-135M-Instruct as an embedder on the ``wordnet_defs`` retrieval set: nDCG@10 on the test queries.

    python benchmarks/llm_embedder.py [--docs 2000] [--mntp-steps 60] [--con-steps 60] [--grl-steps 30]

Rows (one process, same corpus, same test queries, all fp32 on CPU):

(a) causal attention + last-token pooling (EOS appended), no training
(b) bidirectional attention + mean pooling, no training
(c) (b) after a short MNTP run (LoRA on every linear layer, merged)
(d) (c) + LoRA contrastive training (InfoNCE, in-batch negatives) on the *train* queries
(e) (c) + LoRA GRL training (contrastive + generation + KL) on the train queries
ref all-MiniLM-L6-v2 (sentence-transformers, mean pooling, normalised)

Corpus: a ``--docs`` subset of ``corpus_20k`` that contains the relevant doc of every test query
(the split of ``../shared/data/README.md``: ``queries_test.jsonl`` / ``qrels_test.jsonl``) plus
random other synsets (seed 0), so the run fits the 2-core CPU. One relevant doc per query, so
nDCG@10 = mean of 1 / log2(rank + 1) over queries whose doc ranks in the top 10.

Memory: the GRL stage peaks at ~21.5 GB resident; run the script alone on a 24 GB machine.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Timer, machine, now_iso, say, write_result  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wordnet_defs"
TARGETS = r"layer_\d+/(attention/(query|key|value|out)|mlp/(gate|up|down))/kernel$"


def read_jsonl(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def load_data(n_docs: int, data_dir: Path):
    import random

    corpus = {r["id"]: r["text"] for r in read_jsonl(data_dir / "corpus_20k.jsonl")}
    test_q = {r["id"]: r["text"] for r in read_jsonl(data_dir / "queries_test.jsonl")}
    train_q = {r["id"]: r["text"] for r in read_jsonl(data_dir / "queries_train.jsonl")}
    qrels_test = {r["query_id"]: r["doc_id"] for r in read_jsonl(data_dir / "qrels_test.jsonl")}
    qrels_train = {r["query_id"]: r["doc_id"] for r in read_jsonl(data_dir / "qrels_train.jsonl")}
    needed = sorted(set(qrels_test.values()))
    others = sorted(set(corpus) - set(needed))
    random.Random(0).shuffle(others)
    doc_ids = needed + others[:max(0, n_docs - len(needed))]
    train_pairs = [(train_q[q], corpus[d]) for q, d in sorted(qrels_train.items()) if d in corpus]
    return doc_ids, corpus, test_q, qrels_test, train_pairs


def ndcg_at_10(q_emb, d_emb, q_ids, doc_ids, qrels) -> float:
    import numpy as np

    scores = q_emb @ d_emb.T
    pos = {d: i for i, d in enumerate(doc_ids)}
    total = 0.0
    for r, q in enumerate(q_ids):
        target = scores[r, pos[qrels[q]]]
        rank = int((scores[r] > target).sum()) + 1
        total += 1.0 / math.log2(rank + 1) if rank <= 10 else 0.0
    return total / len(q_ids)


def evaluate(enc, docs, queries, q_ids, doc_ids, qrels, batch_size=32):
    d = enc.encode(docs, batch_size=batch_size, normalize_embeddings=True)
    q = enc.encode(queries, batch_size=batch_size, normalize_embeddings=True)
    return ndcg_at_10(q, d, q_ids, doc_ids, qrels)


def train_lora(model, params, cfg, loss_fn, make_batch, steps, lr, seed=0):
    """LoRA (rank 16 on every linear layer) trained with AdamW for ``steps``; returns merged params."""
    import jax
    import optax

    from jaxbert.peft.lora import LoRA

    lora = LoRA(cfg, targets=TARGETS, rank=16, alpha=32.0)
    p = lora.init(jax.random.key(seed), params)
    tx = optax.multi_transform({"peft": optax.adamw(lr, weight_decay=0.0), "frozen": optax.set_to_zero()},
                               lora.labels(p))
    state = tx.init(p)

    @jax.jit
    def step(p, state, batch, rng):
        (loss, m), g = jax.value_and_grad(lambda p: loss_fn(lora.materialize(p), batch, rng), has_aux=True)(p)
        u, state = tx.update(g, state, p)
        return optax.apply_updates(p, u), state, loss

    rng = jax.random.key(seed + 1)
    losses = []
    for i in range(steps):
        rng, k = jax.random.split(rng)
        p, state, loss = step(p, state, make_batch(i), k)
        losses.append(float(loss))
        if i % 10 == 0 or i == steps - 1:
            say(f"  step {i}: loss {losses[-1]:.4f}")
    return lora.merge(p), losses


def pad(seqs, length, pad_id):
    import numpy as np

    ids = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    for r, s in enumerate(seqs):
        s = s[:length]
        ids[r, :len(s)], mask[r, :len(s)] = s, 1
    return ids, mask


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--mntp-steps", type=int, default=60)
    ap.add_argument("--con-steps", type=int, default=60)
    ap.add_argument("--grl-steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=48)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import numpy as np

    from jaxbert import SentenceEncoder
    from jaxbert.assets import fetch
    from jaxbert.models.llm.hf import load_llm, load_llm_tokenizer
    from jaxbert.inference.llm_encoder import LlmSentenceEncoder
    from jaxbert.models.llm.model import LlmModel
    from jaxbert.objectives import grl, mntp
    from jaxbert.models.llm.pooling import llm_pool
    from jaxbert.objectives.llm_embedding import contrastive_loss
    from jaxbert.tasks.llm_embedding import grl_forward

    doc_ids, corpus, test_q, qrels, train_pairs = load_data(args.docs, args.data)
    docs = [corpus[d] for d in doc_ids]
    q_ids = sorted(test_q)
    queries = [test_q[q] for q in q_ids]
    say(f"{len(docs)} docs, {len(queries)} test queries, {len(train_pairs)} train pairs")
    results, timings = {}, {}

    with Timer() as t:
        ref = SentenceEncoder.from_pretrained(fetch("minilm"))
        results["ref_minilm"] = evaluate(ref, docs, queries, q_ids, doc_ids, qrels)
    timings["ref_minilm"] = t.seconds
    say(f"MiniLM nDCG@10 {results['ref_minilm']:.4f}")

    gguf = fetch("smollm2")
    pre = load_llm(gguf, attention_implementation="dot_product_attention")
    tok = load_llm_tokenizer(gguf, pre.config)
    base_params = pre.params

    def encoder(params, bidirectional, pooling):
        cfg = pre.config.replace(attention_mode="bidirectional" if bidirectional else "causal")
        return LlmSentenceEncoder(LlmModel(cfg), params, cfg, tok, pooling=pooling, max_length=args.max_length)

    def run(name, params, bidirectional, pooling):
        with Timer() as t:
            results[name] = evaluate(encoder(params, bidirectional, pooling), docs, queries, q_ids, doc_ids, qrels)
        timings[name] = t.seconds
        say(f"{name}: nDCG@10 {results[name]:.4f} ({t.seconds:.0f} s)")

    run("a_causal_last_token", base_params, False, "last_token")
    run("b_bidirectional_mean", base_params, True, "mean")

    # (c) MNTP on corpus texts (the definitions; no test-query text).
    cfg = pre.config.replace(attention_mode="bidirectional")
    model = LlmModel(cfg)
    mask_id = mntp.default_mask_token_id(tok)
    rng = np.random.default_rng(0)
    mntp_texts = [corpus[d] for d in doc_ids]

    def mntp_batch(i):
        sel = rng.choice(len(mntp_texts), args.batch, replace=False)
        ids, m = pad([tok(mntp_texts[j])["input_ids"] for j in sel], args.max_length, tok.pad_token_id)
        x, labels = mntp.mntp_mask(rng, ids, m, mask_token_id=mask_id, vocab_size=cfg.vocab_size, mask_prob=0.2)
        return {"input_ids": x, "attention_mask": m, "labels": labels}

    with Timer() as t:
        mntp_params, mntp_losses = train_lora(model, base_params, cfg,
                                              lambda p, b, r: mntp.mntp_loss(model.apply(
                                                  {"params": p}, b["input_ids"], b["attention_mask"],
                                                  attention_mode="bidirectional", return_logits=True).logits,
                                                  b["labels"]), mntp_batch,
                                              args.mntp_steps, 1e-4)
    timings["mntp_train"] = t.seconds
    run("c_mntp_bidirectional_mean", mntp_params, True, "mean")

    # (d) LoRA contrastive on train queries.
    def con_batch(i):
        sel = rng.choice(len(train_pairs), args.batch, replace=False)
        q, m_q = pad([tok(train_pairs[j][0])["input_ids"] for j in sel], args.max_length, tok.pad_token_id)
        d, m_d = pad([tok(train_pairs[j][1])["input_ids"] for j in sel], args.max_length, tok.pad_token_id)
        return {"q": q, "q_mask": m_q, "d": d, "d_mask": m_d}

    def con_loss(p, b, r):
        e_q = llm_pool(model.apply({"params": p}, b["q"], b["q_mask"]).last_hidden_state, b["q_mask"], "mean")
        e_d = llm_pool(model.apply({"params": p}, b["d"], b["d_mask"]).last_hidden_state, b["d_mask"], "mean")
        return contrastive_loss(e_q, e_d, temperature=0.05)

    with Timer() as t:
        con_params, con_losses = train_lora(model, mntp_params, cfg, con_loss, con_batch, args.con_steps, 2e-4)
    timings["contrastive_train"] = t.seconds
    run("d_mntp_contrastive", con_params, True, "mean")

    # (e) GRL: candidates = own positive + the next query's positive as a hard negative.
    def grl_batch(i):
        sel = rng.choice(len(train_pairs), args.batch, replace=False)
        qs = [tok(train_pairs[j][0])["input_ids"][:args.max_length // 2] for j in sel]
        ds = [tok(train_pairs[j][1])["input_ids"][:args.max_length // 2] for j in sel]
        cands = [[ds[k], ds[(k + 1) % len(ds)]] for k in range(len(ds))]
        q, m_q = pad(qs, args.max_length, tok.pad_token_id)
        d = np.stack([pad(c, args.max_length, tok.pad_token_id)[0] for c in cands])
        m_d = np.stack([pad(c, args.max_length, tok.pad_token_id)[1] for c in cands])
        gen, gen_m, gen_t = [], [], []
        for k, c in enumerate(cands):
            rows = [qs[k] + x for x in c]
            ids, m = pad(rows, args.max_length, tok.pad_token_id)
            tgt = np.zeros_like(m)
            for r, x in enumerate(c):
                tgt[r, len(qs[k]):len(qs[k]) + len(x)] = 1
            gen.append(ids), gen_m.append(m), gen_t.append(tgt * m)
        return {"q_ids": q, "q_mask": m_q, "d_ids": d, "d_mask": m_d, "gen_ids": np.stack(gen),
                "gen_mask": np.stack(gen_m), "gen_target": np.stack(gen_t)}

    # GRL runs the model three times per step (queries, candidates, causal query+candidate with
    # full-vocabulary logits). Its step peaks at ~21.5 GB RSS on this CPU even with the layers
    # rematerialised (same gradients); a run beside other jobs on a 24 GB machine was OOM-killed.
    grl_model = LlmModel(cfg.replace(remat=True))
    with Timer() as t:
        grl_params, grl_losses = train_lora(grl_model, mntp_params, cfg,
                                            lambda p, b, r: grl.grl_loss(*grl_forward(p, grl_model, b), b["gen_ids"],
                                                                         b["gen_target"], temperature=0.05),
                                            grl_batch, args.grl_steps, 2e-4)
    timings["grl_train"] = t.seconds
    run("e_mntp_grl", grl_params, True, "mean")

    write_result(args.out or "llm_embedder", {
        "benchmark": "llm_embedder", "date": now_iso(), "machine": machine(), "args": vars(args) | {"data": str(args.data)},
        "ndcg_at_10_test_queries": results, "seconds": timings,
        "train_losses": {"mntp": mntp_losses, "contrastive": con_losses, "grl": grl_losses},
        "notes": "corpus = relevant docs of the 1,000 test queries + random corpus_20k synsets; fp32 CPU",
    })


if __name__ == "__main__":
    main()
