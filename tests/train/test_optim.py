"""Tests for jaxbert.train.optim: labels, freezing, LLRD, weight-decay masks, schedules, re-init."""

import math
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbert.models import registry
from jaxbert.models.task_models import build_task_model
from jaxbert.train import optim

NUM_LAYERS = 4


def _init(seed: int):
    cfg, backbone = registry.get("bert-tiny", num_hidden_layers=NUM_LAYERS, vocab_size=512,
                                 max_position_embeddings=64)
    model = build_task_model(cfg, backbone, "sequence_classification", num_labels=2)
    ids = jnp.ones((1, 8), jnp.int32)
    return flax.linen.unbox(model.init(jax.random.key(seed), ids)["params"])


@pytest.fixture(scope="module")
def params():
    return _init(0)


def _flat(tree):
    return {optim.path_str(kp): x for kp, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _cfg(**kw):
    c = optim.default_optim_config()
    c.schedule = "constant"
    c.warmup_steps = 0
    c.grad_clip_norm = None
    c.update(kw)
    return c


def _random_grads(params, seed=1):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def _run(tx, params, grads, steps):
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        u, s = tx.update(grads, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(steps):
        params, state = step(params, state)
    return params, state


# ---------------------------------------------------------------- paths and labels

def test_param_paths_and_label_params(params):
    paths = _flat(optim.param_paths(params))
    assert paths["encoder/layer_3/attention/query/kernel"] == "encoder/layer_3/attention/query/kernel"
    assert "classifier/out/bias" in paths
    labels = _flat(optim.label_params(params, [(r"embeddings/", "emb"), (r"layer_\d+/", "layer"),
                                               (r"encoder/", "enc")], default="head"))
    assert labels["encoder/embeddings/word_embeddings/embedding"] == "emb"
    assert labels["encoder/layer_0/mlp/wi/kernel"] == "layer"
    assert labels["encoder/pooler/dense/kernel"] == "enc"
    assert labels["classifier/out/kernel"] == "head"
    assert optim.count_layers(params) == NUM_LAYERS


def test_rule_matching_nothing_lists_paths(params):
    with pytest.raises(ValueError, match=r"'nonexistent_module/'.*e\.g\..*encoder/"):
        optim.check_rules_match(params, [r"layer_0/", r"nonexistent_module/"], what="optim.groups")
    cfg = _cfg(groups=[{"regex": r"nonexistent_module/", "lr_mult": 2.0}])
    with pytest.raises(ValueError, match=r"optim.groups regex 'nonexistent_module/' matches no parameter"):
        optim.make_optimizer(cfg, params)


def test_unknown_names_are_errors(params):
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamax'.*adamw.*lamb.*adafactor.*sgd"):
        optim.make_optimizer(_cfg(name="adamax"), params)
    with pytest.raises(ValueError, match=r"unknown schedule 'step'.*linear.*cosine"):
        optim.make_schedule(_cfg(schedule="step"))
    with pytest.raises(ValueError, match=r"unknown optim config key\(s\) \['lr'\]"):
        optim.make_optimizer({"lr": 1e-3}, params)
    with pytest.raises(ValueError, match="unknown key"):
        optim.make_optimizer(_cfg(groups=[{"regex": "classifier", "lr": 2.0}]), params)
    with pytest.raises(ValueError, match="total_steps"):
        optim.make_schedule(_cfg(schedule="linear", total_steps=None))


# ---------------------------------------------------------------- weight decay

def test_no_decay_mask_paths(params):
    _, info = optim.make_optimizer(_cfg(), params)
    mask = _flat(info["decay_mask"])
    for path, decayed in mask.items():
        expect = not (path.endswith("/bias") or path.endswith("/scale"))
        assert decayed == expect, path
    assert mask["encoder/embeddings/word_embeddings/embedding"]
    assert not mask["encoder/embeddings/norm/scale"]
    assert not mask["encoder/layer_1/attention_norm/bias"]
    assert mask["encoder/layer_1/attention/query/kernel"]


def test_adamw_decays_kernels_not_biases_or_norms(params):
    lr, wd = 0.1, 0.1
    tx, _ = optim.make_optimizer(_cfg(learning_rate=lr, weight_decay=wd), params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    new, _ = _run(tx, params, zeros, steps=2)
    old_f, new_f = _flat(params), _flat(new)
    for path, old in old_f.items():
        if path.endswith("/bias") or path.endswith("/scale"):
            np.testing.assert_array_equal(new_f[path], old, err_msg=path)
        else:  # zero grads: Adam step is 0, only the decoupled decay p -= lr*wd*p remains
            np.testing.assert_allclose(new_f[path], old * (1 - lr * wd) ** 2, rtol=1e-5, atol=1e-7, err_msg=path)
            assert float(jnp.abs(old).sum()) > 0


# ---------------------------------------------------------------- freezing

def test_frozen_leaves_unchanged_and_stateless(params):
    cfg = _cfg(learning_rate=1e-2, freeze_embeddings=True, freeze_lower_layers=2,
               groups=[{"regex": r"^encoder/pooler/", "frozen": True}])
    tx, info = optim.make_optimizer(cfg, params)
    mask = _flat(optim.trainable_mask(info))
    frozen_paths = {p for p, t in mask.items() if not t}
    for p in mask:
        should_freeze = (p.startswith("encoder/embeddings/") or p.startswith("encoder/layer_0/")
                         or p.startswith("encoder/layer_1/") or p.startswith("encoder/pooler/"))
        assert (p in frozen_paths) == should_freeze, p
    sizes = {p: x.size for p, x in _flat(params).items()}
    assert info["num_frozen"] == sum(sizes[p] for p in frozen_paths)
    assert info["num_trainable"] + info["num_frozen"] == sum(sizes.values())

    grads = _random_grads(params)
    new, state = _run(tx, params, grads, steps=3)
    old_f, new_f = _flat(params), _flat(new)
    for p in old_f:
        if p in frozen_paths:
            assert np.array_equal(np.asarray(new_f[p]), np.asarray(old_f[p])), p
        else:
            assert not np.array_equal(np.asarray(new_f[p]), np.asarray(old_f[p])), p

    # Adam keeps mu and nu for trainable leaves only; everything else in the state is scalar counts.
    state_arrays = [x for x in jax.tree.leaves(state) if x.ndim > 0]
    assert sum(x.size for x in state_arrays) == 2 * info["num_trainable"]
    assert len(state_arrays) == 2 * sum(mask.values())


def test_explicit_labels_override(params):
    frozen = jax.tree_util.tree_map_with_path(lambda kp, _: not optim.path_str(kp).startswith("classifier/"), params)
    labels = optim.freeze_mask_to_labels(frozen, trainable_label="head")
    tx, info = optim.make_optimizer(_cfg(learning_rate=1e-2), params, labels=labels, label_lr_mults={"head": 3.0})
    mults = optim.lr_multipliers(info)
    assert mults["classifier/out/kernel"] == 3.0 and mults["encoder/layer_0/mlp/wi/kernel"] == 0.0
    new, state = _run(tx, params, _random_grads(params), steps=1)
    assert sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0) == 2 * (128 * 2 + 2)
    np.testing.assert_array_equal(new["encoder"]["layer_3"]["mlp"]["wo"]["kernel"],
                                  params["encoder"]["layer_3"]["mlp"]["wo"]["kernel"])
    # a prefix tree of labels works too
    prefix = {"classifier": "head", "encoder": optim.FROZEN}
    _, info2 = optim.make_optimizer(_cfg(), params, labels=prefix)
    assert _flat(optim.trainable_mask(info2)) == _flat(optim.trainable_mask(info))
    with pytest.raises(ValueError, match="regex-labelling options"):
        optim.make_optimizer(_cfg(layerwise_lr_decay=0.9), params, labels=labels)


def test_clipping_ignores_frozen_grads(params):
    cfg = _cfg(name="sgd", momentum=0.0, weight_decay=0.0, learning_rate=1.0, grad_clip_norm=1.0,
               freeze_embeddings=True)
    tx, info = optim.make_optimizer(cfg, params)
    train = _flat(optim.trainable_mask(info))
    # trainable grads with global norm 0.5 (below the threshold), huge frozen grads
    n_train = info["num_trainable"]
    grads = jax.tree_util.tree_map_with_path(
        lambda kp, x: jnp.full(x.shape, 0.5 / math.sqrt(n_train) if train[optim.path_str(kp)] else 1e3, x.dtype),
        params)
    updates, _ = tx.update(grads, tx.init(params), params)
    u = _flat(updates)
    g = _flat(grads)
    for p, t in train.items():
        if t:
            np.testing.assert_allclose(u[p], -g[p], rtol=1e-6, err_msg=p)
        else:
            assert not np.any(np.asarray(u[p])), p


# ---------------------------------------------------------------- learning-rate multipliers

def test_layerwise_lr_decay_multipliers(params):
    d = 0.8
    cfg = _cfg(name="sgd", momentum=0.0, weight_decay=0.0, learning_rate=0.5, layerwise_lr_decay=d,
               groups=[{"regex": r"^classifier/", "lr_mult": 10.0}])
    tx, info = optim.make_optimizer(cfg, params)
    assert info["num_layers"] == NUM_LAYERS
    mults = optim.lr_multipliers(info)
    for p, m in mults.items():
        layer = re.search(r"layer_(\d+)/", p)
        if layer:
            expect = d ** (NUM_LAYERS - int(layer.group(1)))
        elif p.startswith("encoder/embeddings/"):
            expect = d ** (NUM_LAYERS + 1)
        elif p.startswith("classifier/"):
            expect = 10.0
        else:
            assert p.startswith("encoder/pooler/")
            expect = 1.0
        assert m == pytest.approx(expect, rel=1e-12), p
    assert mults["encoder/layer_3/mlp/wo/kernel"] == pytest.approx(d)
    assert mults["encoder/layer_0/mlp/wo/kernel"] == pytest.approx(d ** 4)
    assert len(info["label_lr_mults"]) == NUM_LAYERS + 3  # layers, embeddings, pooler (x1), classifier (x10)

    # the multipliers are really applied: plain SGD with unit grads moves each leaf by lr * mult
    ones = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(ones, tx.init(params), params)
    for p, u in _flat(updates).items():
        np.testing.assert_allclose(u, -0.5 * mults[p], rtol=1e-6, err_msg=p)


# ---------------------------------------------------------------- schedules

def _sched(**kw):
    c = optim.default_optim_config()
    c.learning_rate = 1.0
    c.update(kw)
    s = optim.make_schedule(c)
    return lambda step: float(s(step))


def test_linear_schedule():
    s = _sched(schedule="linear", total_steps=100, warmup_ratio=0.1, end_lr_factor=0.0)
    assert s(0) == 0.0
    assert s(5) == pytest.approx(0.5)
    assert s(10) == pytest.approx(1.0)
    assert s(55) == pytest.approx(0.5)
    assert s(100) == pytest.approx(0.0, abs=1e-7)
    assert s(150) == pytest.approx(0.0, abs=1e-7)
    # warmup_steps takes precedence over warmup_ratio; end_lr_factor sets the floor
    s = _sched(schedule="linear", total_steps=100, warmup_steps=20, end_lr_factor=0.1)
    assert s(10) == pytest.approx(0.5)
    assert s(60) == pytest.approx(0.55)
    assert s(100) == pytest.approx(0.1)


def test_cosine_schedule():
    s = _sched(schedule="cosine", total_steps=110, warmup_steps=10, end_lr_factor=0.0)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.5)
    assert s(35) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert s(110) == pytest.approx(0.0, abs=1e-7)


def test_wsd_and_constant_schedules():
    s = _sched(schedule="wsd", total_steps=100, warmup_steps=10, decay_ratio=0.2, end_lr_factor=0.0)
    assert s(5) == pytest.approx(0.5)
    assert s(10) == pytest.approx(1.0)
    assert s(50) == pytest.approx(1.0)
    assert s(80) == pytest.approx(1.0)
    assert s(90) == pytest.approx(0.5)
    assert s(100) == pytest.approx(0.0, abs=1e-7)
    s = _sched(schedule="warmup_stable_decay", total_steps=100, warmup_steps=0, decay_ratio=0.2, decay_shape="sqrt")
    assert s(85) == pytest.approx(1 - math.sqrt(0.25))
    s = _sched(schedule="constant", warmup_steps=4, total_steps=None)
    assert s(2) == pytest.approx(0.5) and s(4) == 1.0 and s(10 ** 6) == 1.0
    with pytest.raises(ValueError, match="exceed total_steps"):
        _sched(schedule="wsd", total_steps=100, warmup_steps=90, decay_ratio=0.2)


def test_scaled_schedule_inside_optimizer(params):
    # LR warmup reaches each group scaled by its multiplier (sgd, unit grads)
    cfg = _cfg(name="sgd", momentum=0.0, weight_decay=0.0, learning_rate=1.0, schedule="linear",
               total_steps=10, warmup_steps=2, groups=[{"regex": r"^classifier/", "lr_mult": 2.0}])
    tx, _ = optim.make_optimizer(cfg, params)
    ones = jax.tree.map(jnp.ones_like, params)
    state = tx.init(params)
    seen = []
    for _ in range(3):
        u, state = tx.update(ones, state, params)
        seen.append((float(u["classifier"]["out"]["bias"][0]), float(u["encoder"]["pooler"]["dense"]["bias"][0])))
    assert seen == [pytest.approx((0.0, 0.0)), pytest.approx((-1.0, -0.5)), pytest.approx((-2.0, -1.0))]


# ---------------------------------------------------------------- other optimizers

@pytest.mark.parametrize("name", ["lamb", "adafactor", "sgd"])
def test_other_optimizers_step(params, name):
    tx, _ = optim.make_optimizer(_cfg(name=name, learning_rate=1e-2, freeze_embeddings=True), params)
    new, _ = _run(tx, params, _random_grads(params), steps=1)
    old_f, new_f = _flat(params), _flat(new)
    for p in old_f:
        assert np.all(np.isfinite(np.asarray(new_f[p]))), p
        changed = not np.array_equal(np.asarray(new_f[p]), np.asarray(old_f[p]))
        assert changed == (not p.startswith("encoder/embeddings/")), p


# ---------------------------------------------------------------- re-init

def test_reinit_top_layers(params):
    fresh = _init(1)
    out = optim.reinit_top_layers(params, fresh, 2)
    old_f, fresh_f, out_f = _flat(params), _flat(fresh), _flat(out)
    for p, x in out_f.items():
        replaced = p.startswith(("encoder/layer_2/", "encoder/layer_3/", "encoder/pooler/"))
        assert x is (fresh_f[p] if replaced else old_f[p]), p
    # sanity: the two inits differ, so the identity checks above mean something
    assert not np.array_equal(old_f["encoder/layer_3/mlp/wi/kernel"], fresh_f["encoder/layer_3/mlp/wi/kernel"])
    same = optim.reinit_top_layers(params, fresh, 0)
    assert all(_flat(same)[p] is old_f[p] for p in old_f)
    with pytest.raises(ValueError, match=r"k=5 must be in \[0, 4\]"):
        optim.reinit_top_layers(params, fresh, 5)
    with pytest.raises(ValueError, match="does not match"):
        optim.reinit_top_layers(params, {"encoder": fresh["encoder"]}, 1)


def _schedule_by_formula(kind, lr, total, warm, end_factor=0.0, decay_ratio=0.1, decay_shape="linear"):
    """The schedules' definitions (make_schedule's docstring), in float64, one step at a time."""
    end = lr * end_factor
    out = []
    for step in range(total + 5):
        if step < warm:
            out.append(lr * step / warm)
            continue
        if kind == "constant":
            out.append(lr)
        elif kind in ("linear", "cosine"):
            frac = min(max((step - warm) / max(total - warm, 1), 0.0), 1.0)
            out.append(lr + (end - lr) * frac if kind == "linear"
                       else end + (lr - end) * 0.5 * (1 + math.cos(math.pi * frac)))
        else:
            decay = round(decay_ratio * total)
            frac = min(max((step - (total - decay)) / max(decay, 1), 0.0), 1.0)
            f = {"linear": frac, "cosine": 0.5 * (1 - math.cos(math.pi * frac)), "sqrt": math.sqrt(frac)}[decay_shape]
            out.append(lr + (end - lr) * f)
    return np.array(out)


@pytest.mark.parametrize("kind, total, warm, end_factor, decay_ratio, decay_shape", [
    ("linear", 267, 16, 0.0, 0.1, "linear"),  # the main job's shape (rotten_tomatoes, 6% warmup)
    ("linear", 50, 0, 0.02, 0.1, "linear"),
    ("linear", 10, 10, 0.0, 0.1, "linear"),  # warmup only: end right after
    ("cosine", 120, 12, 0.1, 0.1, "linear"),
    ("cosine", 40, 0, 0.0, 0.1, "linear"),
    ("constant", 30, 4, 0.0, 0.1, "linear"),
    ("wsd", 100, 10, 0.0, 0.2, "linear"),
    ("wsd", 100, 0, 0.1, 0.3, "cosine"),
    ("wsd", 90, 9, 0.0, 0.25, "sqrt"),
    ("wsd", 20, 5, 0.0, 0.0, "linear"),  # no decay phase
])
def test_optax_schedules_equal_the_formulas_at_every_step(kind, total, warm, end_factor, decay_ratio, decay_shape):
    """make_schedule is built from optax (linear_schedule, cosine_decay_schedule, join_schedules); its
    values equal the definitions (the previous hand-written implementation's formulas) at every step."""
    lr = 1e-4
    c = _cfg(schedule=kind, learning_rate=lr, total_steps=total, warmup_steps=warm, end_lr_factor=end_factor,
             decay_ratio=decay_ratio, decay_shape=decay_shape)
    s = optim.make_schedule(c)
    got = np.array([float(s(i)) for i in range(total + 5)])
    want = _schedule_by_formula(kind, lr, total, warm, end_factor, decay_ratio, decay_shape)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * lr)
    assert s(jnp.int32(3)).dtype == jnp.float32
