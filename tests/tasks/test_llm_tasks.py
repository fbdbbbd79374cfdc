"""The ``llm_embedding`` task (issue #6) through the launcher: ``mntp``, ``contrastive`` and ``grl`` on
``tiny,runlocal`` (a random 2-layer Llama with a word-level tokenizer built from wordnet_defs, LoRA,
4 steps) each run ``python -m experiments.launch`` end to end; the train loss is finite and falls,
nDCG@10 lands in ``metrics.jsonl`` at the periodic and final evaluations, and the export loads with
``jaxbert.SentenceEncoder.from_pretrained`` and gives the embeddings of the trained (restored,
unmerged LoRA) params computed by the task's own evaluation path. Bad configs fail with messages
that name the bad value; the batch iterator resumes exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = "experiments/configs/llm_embedding.py"


def _launch(tmp_path_factory, data_dir, arg: str) -> tuple[Path, subprocess.CompletedProcess]:
    workdir = tmp_path_factory.mktemp("llm_task") / "run"
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", JAXBERT_DATA=str(data_dir),
               JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "jax_compilation_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    cmd = [sys.executable, "-m", "experiments.launch", "--config", f"{CONFIG}:{arg}", "--workdir", str(workdir),
           "--config.progress=False"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return workdir, proc


def _restored_params(workdir: Path):
    from jaxbert.train.checkpoint import Checkpointer
    with Checkpointer(workdir) as ckpt:
        step = ckpt.latest_step()
        state, _ = ckpt.restore(step)
    return step, state["params"]


@pytest.mark.parametrize("objective", ["mntp", "contrastive", "grl"])
def test_launcher_trains_evaluates_exports(objective, tmp_path_factory, data_dir):
    import jax

    from experiments.configs.llm_embedding import get_config
    from jaxbert import SentenceEncoder
    from jaxbert.inference.llm_encoder import LlmSentenceEncoder
    from jaxbert.tasks import get_task

    workdir, proc = _launch(tmp_path_factory, data_dir, f"{objective},tiny,runlocal")
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["status"] == "done" and summary["step"] == 4
    assert Path(summary["adapter_dir"]).is_dir()  # LoRA: adapter-only checkpoint + merged export

    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in train)
    assert train[-1]["loss"] < train[0]["loss"], [r["loss"] for r in train]
    evals = [r for r in rows if r["split"] == "wordnet"]
    assert [r["step"] for r in evals] == [2, 4]  # eval_every=2 and the final evaluation
    assert all(0.0 <= r["ndcg@10"] <= 1.0 and r["num_queries"] == 50 for r in evals)
    if objective == "grl":
        assert {"gen_loss", "kl_loss", "infonce"} <= set(train[0])
    results = json.loads((workdir / "eval_results.json").read_text())
    assert results["wordnet"]["ndcg@10"] == evals[-1]["ndcg@10"]

    # The export loads with the run's settings and reproduces the trained params' embeddings.
    export = workdir / "export"
    settings = json.loads((export / "config.json").read_text())["jaxbert_embedding"]
    assert settings["pooling"] == "mean" and settings["attention_mode"] == "bidirectional"
    enc = SentenceEncoder.from_pretrained(export)
    assert isinstance(enc, LlmSentenceEncoder) and enc.bidirectional and enc.normalize

    cfg = get_config(f"{objective},tiny,runlocal")
    task = get_task(cfg.task)(cfg)
    step, params = _restored_params(workdir)
    assert step == 4
    batch = next(task.eval_batches("wordnet", 32))  # longest texts first; queries carry the instruction
    out, _ = jax.jit(task.predict_fn)(params, batch)
    keep = batch["index"] >= 0
    s = task.eval_sources["wordnet"]
    nq = len(s.queries)
    idx = batch["index"][keep]
    texts = [s.texts[i] for i in idx]
    instr = [task.query_instruction if i < nq else None for i in idx]
    got = np.stack([enc.encode([t], instruction=ins)[0] for t, ins in zip(texts[:6], instr[:6])])
    np.testing.assert_allclose(got, np.asarray(out["embeddings"])[keep][:6], atol=2e-5)
    assert got.shape[1] == task.model_config.hidden_size
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_bad_configs(tmp_path, data_dir):
    from experiments.configs.llm_embedding import get_config
    from jaxbert.tasks import get_task

    with pytest.raises(ValueError, match="unknown objective 'triplet'"):
        get_config("triplet")
    with pytest.raises(ValueError, match=r"unknown config flags \['fast'\]"):
        get_config("mntp,fast")
    with pytest.raises(ValueError, match="'reference_kl' applies to the grl objective only"):
        get_config("contrastive,reference_kl")
    task_cls = get_task("llm_embedding")

    c = get_config("contrastive,tiny,runlocal")
    c.llm.pooling = "max"
    with pytest.raises(ValueError, match="unknown LLM pooling 'max'"):
        task_cls(c)
    c = get_config("mntp,tiny,runlocal")
    c.llm.attention_mode = "causal"
    with pytest.raises(ValueError, match="objective 'mntp' trains the bidirectional encoder"):
        task_cls(c)
    c = get_config("grl,tiny,runlocal")
    c.llm.num_negatives = 0
    with pytest.raises(ValueError, match="set llm.num_negatives >= 1"):
        task_cls(c)
    c = get_config("contrastive,tiny,runlocal")
    c.llm.num_negatives = 3
    with pytest.raises(ValueError, match=r"llm.num_negatives=3 but the records of .* have 1 negative"):
        task_cls(c)
    c = get_config("contrastive,tiny,runlocal")
    c.model.overrides.hidden_dropout_prob = 0.1
    with pytest.raises(ValueError, match=r"model.overrides \['hidden_dropout_prob'\] do not apply to LLM"):
        task_cls(c)
    c = get_config("contrastive,tiny,runlocal")
    c.model.init_from = str(tmp_path)
    with pytest.raises(ValueError, match="data.tokenizer='words' builds a tokenizer for a randomly initialised"):
        task_cls(c)

    # A tokenizer with more ids than the model's vocabulary (llama-tiny: 256) is refused.
    from jaxbert.data.features.llm import build_word_tokenizer
    words = [f"w{i}" for i in range(400)]
    build_word_tokenizer([" ".join(words)], max_words=400).save_pretrained(str(tmp_path / "tok"))
    c = get_config("contrastive,tiny,runlocal")
    c.data.tokenizer = str(tmp_path / "tok")
    with pytest.raises(ValueError, match="tokenizer has 405 tokens but the model's vocab_size is 256"):
        task_cls(c)

    # A record without the text field names the file and line.
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "a fine text"}) + "\n" + json.dumps({"body": "x"}) + "\n")
    c = get_config("mntp,tiny,runlocal")
    c.data.train = str(bad)
    with pytest.raises(ValueError, match=r"bad.jsonl line 2 .*field 'text' must be a non-empty text"):
        task_cls(c)


def test_batch_iterator_resumes_exactly():
    from jaxbert.data.batching import IndexedBatchIterator

    def make(idx, rng):
        return {"idx": idx.copy(), "noise": rng.integers(0, 1000, size=3)}

    it = IndexedBatchIterator(10, 4, seed=3, make_batch=make, process_index=0, process_count=1)
    batches = [next(it) for _ in range(6)]  # crosses two epoch boundaries
    seen = np.concatenate([b["idx"] for b in batches[:5]])[:10]
    assert sorted(seen.tolist()) == list(range(10))  # the first epoch visits every record once
    again = IndexedBatchIterator(10, 4, seed=3, make_batch=make, process_index=0, process_count=1)
    next(again)
    state = again.get_state()
    resumed = IndexedBatchIterator(10, 4, seed=3, make_batch=make, process_index=0, process_count=1)
    resumed.set_state(json.loads(json.dumps(state)))
    for want in batches[1:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["idx"], want["idx"])
        np.testing.assert_array_equal(got["noise"], want["noise"])
    other = IndexedBatchIterator(10, 4, seed=4, make_batch=make, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="seed: saved 3, current 4"):
        other.set_state(state)


def test_focal_and_mixing_flags_reach_the_loss(data_dir):
    """``focal`` and ``mix`` change the contrastive loss of the same batch and params; GRL's
    ``reference_kl`` keeps the loss value and only removes the KL / generation gradients."""
    import jax
    import flax.linen as nn

    from experiments.configs.llm_embedding import get_config
    from jaxbert.tasks import get_task

    def setup(arg):
        task = get_task("llm_embedding")(get_config(arg))
        params = nn.unbox(task.model.init(jax.random.key(0), **task.sample_input)["params"])
        return task, params, next(task.train_iterator(8, 0))

    task, params, batch = setup("contrastive,tiny,runlocal")
    rng = jax.random.key(1)
    plain, m = task.loss_fn(params, batch, rng, True)
    assert np.isfinite(float(plain)) and float(m["weight"]) == 8 and float(m["focal_weight"]) == 1.0
    task.lc.focal_gamma = 2.0  # what the 'focal' flag sets (the loss reads the config at trace time)
    focal, fm = task.loss_fn(params, batch, rng, True)
    assert 0.0 < float(fm["focal_weight"]) < 1.0 and float(focal) < float(plain)  # weights (1 - p)^2 < 1
    np.testing.assert_allclose(float(fm["infonce"]), float(m["infonce"]), rtol=1e-6)  # unweighted: unchanged
    task.lc.focal_gamma = 0.0
    task.lc.mix.num_synthetic, task.lc.mix.num_query_mixed = 4, 2  # the 'mix' flag
    mixed, mm = task.loss_fn(params, batch, rng, True)
    assert float(mm["infonce"]) > float(m["infonce"])  # 6 synthetic hard negatives per query join the softmax

    gtask, gparams, gbatch = setup("grl,tiny,runlocal")
    rtask, _, _ = setup("grl,tiny,runlocal,reference_kl")
    loss_fn = lambda t: (lambda p: t.loss_fn(p, gbatch, rng, True)[0])  # noqa: E731
    (l1, g1), (l2, g2) = (jax.jit(jax.value_and_grad(loss_fn(t)))(gparams) for t in (gtask, rtask))
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-6)
    norm = lambda g: float(sum(np.sum(np.square(x)) for x in jax.tree.leaves(g)))  # noqa: E731
    assert norm(g1) != pytest.approx(norm(g2), rel=1e-3)
