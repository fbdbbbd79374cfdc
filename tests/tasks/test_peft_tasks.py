"""PEFT on every task (issue #20): LoRA trains token classification, extractive QA and MLM through
the task's own loss (loss falls, only the trainable leaves move, every frozen base leaf bitwise
equal), and tasks refuse the methods they cannot train with an error naming task and method.

Tiny random models (``bert-tiny``) on runlocal-sized data; each run trains one fixed batch a few
steps with the engine's optimizer and train step, wired as the Trainer wires them.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbert import peft
from jaxbert.peft import PeftError, flatten
from jaxbert.tasks import get_task
from jaxbert.train.optim import default_optim_config, make_optimizer
from jaxbert.train.state import TrainState
from jaxbert.train.step import make_train_step

STEPS = 8


def _token_config():
    from experiments.configs.finetune_token_classification import get_config
    c = get_config("brown_pos,runlocal,tiny")
    c.data.train_subset = 32
    c.eval_splits = ("validation",)
    return c


def _qa_config():
    from experiments.configs.finetune_qa import get_config
    return get_config("fixture,runlocal,tiny")


def _mlm_config(tmp_path):
    from experiments.configs.pretrain_mlm import get_config
    c = get_config("tiny,random,runlocal")
    c.mlm.max_documents = 12
    c.mlm.validation_ids = c.mlm.validation_ids[:2]
    c.mlm.test_ids = c.mlm.test_ids[:1]
    c.mlm.tokenizer.out_dir = str(tmp_path / "tokenizer")
    c.mlm.tokenizer.vocab_size = 2000
    return c


CONFIGS = {"token_classification": lambda tmp: _token_config(), "question_answering": lambda tmp: _qa_config(),
           "mlm": _mlm_config}


def _with_peft(c, method, **opts):
    c.peft.method = method
    for k, v in opts.items():
        c.peft[peft.METHODS[method].section][k] = v
    return c


def train_fixed_batch(task, steps=STEPS, lr=5e-3):
    """``(losses, params_before, params_after, labels)`` of ``steps`` updates on one training batch."""
    params = task.pretrained_params
    if params is None:
        params = nn.unbox(task.model.init(jax.random.key(0), **task.sample_input)["params"])
    labels = task.peft.method.labels(params)
    c = default_optim_config()
    c.learning_rate, c.schedule, c.warmup_steps, c.weight_decay, c.total_steps = lr, "constant", 0, 0.0, steps
    tx, _ = make_optimizer(c, params, labels=labels)
    step = jax.jit(make_train_step(task.loss_fn, tx))
    batch = next(task.train_iterator(8, seed=0))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(1)))
    losses = []
    for _ in range(steps):
        state, m = step(state, batch)
        m = jax.device_get(m)
        losses.append(float(m["loss"]) / max(float(m["weight"]), 1.0))
    return losses, flatten(params), flatten(jax.device_get(state.params)), flatten(labels)


@pytest.mark.parametrize("task_name", ["token_classification", "question_answering", "mlm"])
def test_lora_trains_task_and_only_trainable_leaves_move(task_name, tmp_path, minilm_dir, capsys):
    c = _with_peft(CONFIGS[task_name](tmp_path), "lora", rank=4, dropout=0.0)
    mlm = task_name == "mlm"
    if mlm:  # a frozen random encoder and tied head: LoRA alone fits the masked tokens, slowly (no dropout noise)
        c.model.overrides.hidden_dropout_prob = c.model.overrides.attention_probs_dropout_prob = 0.0
    task = get_task(task_name)(c)
    assert task.peft is not None and isinstance(task.peft.method, peft.LoRA)
    losses, before, after, labels = train_fixed_batch(task, steps=2 * STEPS if mlm else STEPS, lr=3e-2 if mlm else 5e-3)
    lora = sorted(p for p in after if "lora_" in p)
    frozen = [p for p in labels if labels[p] == peft.FROZEN]
    trainable = [p for p in labels if labels[p] != peft.FROZEN]
    changed = [p for p in after if not np.array_equal(np.asarray(after[p]), np.asarray(before[p]))]
    assert lora and frozen
    assert set(lora) <= set(trainable)
    # every frozen base leaf bitwise equal; what moved is trainable (LoRA + the task head, if any)
    for p in frozen:
        np.testing.assert_array_equal(np.asarray(after[p]), np.asarray(before[p]), err_msg=p)
    assert set(changed) <= set(trainable), sorted(set(changed) - set(trainable))
    assert all(p in changed for p in lora if p.endswith("lora_b")), [p for p in lora if p not in changed]
    non_lora_changed = sorted(p for p in changed if "lora_" not in p)
    if task_name == "mlm":  # the MLM head is pretrained (and tied): nothing but LoRA leaves may move
        assert non_lora_changed == []
    else:  # the freshly initialised task head trains with LoRA (peft.head_regex)
        assert non_lora_changed and all(p.startswith(("classifier/", "qa_head/")) for p in non_lora_changed)
    if mlm:  # near log(vocab) a frozen random head moves slowly (and not every step): 0.2+ nats in all,
        # the second half's mean below the first half's
        half = len(losses) // 2
        assert losses[0] - losses[-1] > 0.2 and np.mean(losses[half:]) < np.mean(losses[:half]) - 0.1, losses
    else:
        assert losses[-1] < 0.9 * losses[0], losses
    with capsys.disabled():
        print(f"\n[peft-tasks] {task_name} lora: loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
              f"{len(changed)} leaves changed ({len(lora)} LoRA, {len(non_lora_changed)} head), "
              f"{len(frozen)} frozen bitwise equal")


@pytest.mark.parametrize("task_name", ["token_classification", "question_answering", "mlm"])
def test_soft_prompt_is_refused_on_per_token_tasks(task_name, tmp_path, minilm_dir):
    c = _with_peft(CONFIGS[task_name](tmp_path), "prompt", length=2, init_from="random")
    with pytest.raises(PeftError, match=rf"task '{task_name}': peft.method='prompt' inserts soft-prompt tokens"):
        get_task(task_name)(c)


def test_adapter_trains_question_answering(tmp_path, minilm_dir):
    """A method that inserts modules (Pfeiffer adapter) also trains a per-token task."""
    task = get_task("question_answering")(_with_peft(_qa_config(), "pfeiffer", bottleneck=8))
    losses, before, after, labels = train_fixed_batch(task)
    adapter = [p for p in after if "adapter" in p]
    assert adapter and all(labels[p] != peft.FROZEN for p in adapter)
    for p in labels:
        if labels[p] == peft.FROZEN:
            np.testing.assert_array_equal(np.asarray(after[p]), np.asarray(before[p]), err_msg=p)
    assert losses[-1] < 0.9 * losses[0], losses


def test_mlm_refuses_to_freeze_fresh_pretraining_heads(tmp_path, minilm_dir):
    c = _with_peft(_mlm_config(tmp_path), "lora", rank=2)
    c.mlm.decoder.kind = "blocks"
    c.mlm.decoder.num_layers = 1
    with pytest.raises(PeftError, match=r"task 'mlm': peft.method='lora' would freeze .*\['mlm_decoder'\]"):
        get_task("mlm")(c)
    c.peft.head_regex = r"^(mlm_decoder|classifier|qa_head|encoder/pooler)/"
    task = get_task("mlm")(c)
    _, before, after, _ = train_fixed_batch(task, steps=2)
    assert any(p.startswith("mlm_decoder/") and not np.array_equal(after[p], before[p]) for p in after)


def test_llm_task_accepts_module_methods_through_the_decoder_sites():
    """LlmConfig has extension sites (the LLM block calls them): adapters and prefixes pass the task's
    check like the weight-only methods; a method the check refuses would raise PeftError here."""
    from jaxbert.models import registry
    from jaxbert.tasks.llm_embedding import LlmEmbeddingTask

    task = LlmEmbeddingTask.__new__(LlmEmbeddingTask)
    task.model_config = registry.get("llama-tiny", num_hidden_layers=1)[0]
    assert "extensions" in {f.name for f in dataclasses.fields(task.model_config)}
    for name in ("houlsby", "pfeiffer", "prefix", "lora", "bitfit", "dsee"):
        task.check_peft(peft.METHODS[name](task.model_config))


def test_registry_lists_every_task_and_rejects_unknown():
    from jaxbert.tasks import TaskProtocol, Task, task_names
    names = task_names()
    assert names == sorted(["classification", "mlm", "token_classification", "question_answering", "multilabel",
                            "regression", "contrastive", "llm_embedding"])
    for n in names:
        cls = get_task(n)
        assert issubclass(cls, Task) and cls.name == n
    with pytest.raises(ValueError, match="unknown task 'nope'; known: "):
        get_task("nope")
    assert TaskProtocol is not None


def test_task_config_sections_hold_only_their_task_keys():
    from experiments.configs.common import base_config
    qa, tok, mlm, cls = (base_config(t) for t in ("question_answering", "token_classification", "mlm",
                                                   "classification"))
    assert "qa" in qa and "multilabel" not in qa and "mlm" not in qa and "tokens_field" not in qa.data
    assert qa.data.train_subset is None and "train_subset" not in cls.data  # feature tasks only
    assert tok.data.tags_field == "tags" and "qa" not in tok
    assert "mlm" in mlm and "qa" not in mlm and "label_smoothing" not in mlm
    assert cls.label_smoothing == 0.0 and "qa" not in cls and "mlm" not in cls
    with pytest.raises(AttributeError):
        cls.qa.doc_stride = 64  # another task's key does not exist in this task's config


def _recipe(module, arg):
    import importlib
    c = importlib.import_module(f"experiments.configs.{module}").get_config(arg)
    c.model.overrides.hidden_dropout_prob = c.model.overrides.attention_probs_dropout_prob = 0.0
    return c


def _contrastive_config():
    c = _recipe("sentence_embedding", "wordnet,tiny,runlocal")
    c.eval_splits = ()
    return c


OTHER_TASKS = {  # tasks that used to ignore config.peft (contrastive, multi-label, regression) + classification
    "classification": lambda: _recipe("finetune_classification", "trec,runlocal,tiny"),
    "multilabel": lambda: _recipe("finetune_multilabel", "wordnet_pos,runlocal,tiny"),
    "regression": lambda: _recipe("finetune_regression", "simlex999,runlocal,tiny"),
    "contrastive": _contrastive_config,
}


@pytest.mark.parametrize("task_name", sorted(OTHER_TASKS))
def test_lora_is_honoured_by_sequence_and_embedding_tasks(task_name, minilm_dir, data_dir, capsys):
    c = _with_peft(OTHER_TASKS[task_name](), "lora", rank=4)
    task = get_task(task_name)(c)
    assert c.task == task_name and task.peft is not None
    losses, before, after, labels = train_fixed_batch(task, steps=4)
    lora = [p for p in after if p.endswith("lora_b")]
    assert lora and all(not np.array_equal(after[p], before[p]) for p in lora)
    for p in labels:
        if labels[p] == peft.FROZEN:
            np.testing.assert_array_equal(np.asarray(after[p]), np.asarray(before[p]), err_msg=p)
    assert losses[-1] < losses[0], losses
    with capsys.disabled():
        print(f"\n[peft-tasks] {task_name} lora: loss {losses[0]:.4f} -> {losses[-1]:.4f}")


def test_adapter_trains_the_moe_contrastive_task(minilm_dir, data_dir):
    """The mixture-of-experts embedder has the extension sites: the contrastive task with
    contrastive.domains accepts a module method; adapters and the router train, the experts stay."""
    c = _recipe("sentence_embedding", "moe,tiny,runlocal")
    c.eval_splits = ()
    task = get_task("contrastive")(_with_peft(c, "houlsby"))
    losses, before, after, labels = train_fixed_batch(task, steps=4)
    adapters = [p for p in after if "/adapter_" in p]
    assert adapters and any(not np.array_equal(after[p], before[p]) for p in adapters)
    assert any("router" in p and labels[p] != peft.FROZEN for p in labels)
    for p in labels:
        if labels[p] == peft.FROZEN:
            np.testing.assert_array_equal(np.asarray(after[p]), np.asarray(before[p]), err_msg=p)
    assert losses[-1] < losses[0], losses


def test_contrastive_refuses_soft_prompt(minilm_dir, data_dir):
    c = _with_peft(_contrastive_config(), "prompt", length=2, init_from="random")
    with pytest.raises(PeftError, match=r"task 'contrastive': peft.method='prompt' inserts soft-prompt tokens"):
        get_task("contrastive")(c)


def test_trainer_lora_qa_run_exports_merged_model(tmp_path, minilm_dir):
    """Through the Trainer: the adapter checkpoint and the merged HF export (Task.export) of a LoRA QA run
    give the trained model's span logits."""
    from jaxbert.convert import hf as hf_convert
    from jaxbert.train.loop import Trainer

    c = _with_peft(_qa_config(), "lora", rank=4)
    c.num_train_steps, c.progress, c.tensorboard = 2, False, False
    trainer = Trainer(c, tmp_path / "run")
    result = trainer.run()
    assert result["status"] == "done" and (tmp_path / "run" / "adapter").is_dir()
    pre = hf_convert.load_pretrained(result["export_dir"], task="question_answering")
    batch = next(iter(trainer.task.eval_batches("validation", 8)))
    inputs = [batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")]
    want = trainer.task.model.apply({"params": trainer.final_state.params}, *inputs)
    got = pre.model.apply({"params": pre.params}, *inputs)
    for k in ("start_logits", "end_logits"):
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), atol=1e-4, err_msg=k)


def test_launcher_rejects_a_key_of_another_task():
    """A classification run has no ``qa.*`` / ``mlm.*`` / ``data.tokens_field`` keys: the launcher refuses them."""
    from experiments.configs.finetune_classification import get_config
    from experiments.config_flag import check_overrides
    c = get_config("trec,runlocal,tiny")
    check_overrides(["--config.label_smoothing=0.1"], c)  # classification's own key: fine
    for key in ("qa.doc_stride=64", "mlm.rate=0.3", "data.tokens_field=words", "multilabel.default_threshold=0.3"):
        with pytest.raises(SystemExit, match=f"unknown config key '{key.split('=')[0]}'"):
            check_overrides([f"--config.{key}"], c)


def test_prefix_on_m2_is_refused_naming_the_task():
    """An architecture's own check (M2 has no attention keys for a prefix) surfaces as the task's PeftError."""
    from jaxbert.models import registry
    from jaxbert.tasks.classification import ClassificationTask

    task = ClassificationTask.__new__(ClassificationTask)
    task.model_config, _ = registry.get("m2-bert-tiny")
    with pytest.raises(PeftError, match=r"task 'classification': peft.method='prefix' does not fit M2Config: "
                                        r".*M2 has no attention"):
        task.check_peft(peft.METHODS["prefix"](task.model_config))
    task.check_peft(peft.METHODS["pfeiffer"](task.model_config))  # adapters fit M2's sites
