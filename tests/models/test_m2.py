"""Monarch Mixer BERT: FFT long convolution, Hyena filters, the M2 encoder with heads and padding, presets.

Oracles: a direct O(L^2) convolution (explicit Toeplitz matrices), a line-by-line torch
transcription of the reference's ``HyenaFilter.forward`` / ``fftconv_ref`` / ``PositionalEmbedding``
(HazyResearch/m2 ``bert/src/mm/hyena_utils.py``), ``torch.nn.functional.conv1d`` for the short
convolution, and parameter counts computed by hand from the reference modules.
"""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import flax.linen as nn
from flax import traverse_util

from jaxbert.models import registry
from jaxbert.models.m2 import model as m2
from jaxbert.models.layers import hyena
from jaxbert.models.task_models import build_task_model

LENGTHS = [1, 2, 7, 16, 33, 100, 127]


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _direct_conv(u, k_fwd, k_rev=None, bias=None):
    """O(L^2): ``y[b, t, c] = sum_s T_c[t, s] u[b, s, c]`` with an explicit Toeplitz matrix per channel."""
    b, length, c = u.shape
    t_idx, s_idx = np.meshgrid(np.arange(length), np.arange(length), indexing="ij")
    d = t_idx - s_idx
    toeplitz = np.where((d >= 0)[..., None], k_fwd[np.clip(d, 0, None)], 0.0)        # [L, L, c]
    if k_rev is not None:
        toeplitz = toeplitz + np.where((d < 0)[..., None], k_rev[np.clip(-d - 1, 0, None)], 0.0)
    y = np.einsum("tsc,bsc->btc", toeplitz, u)
    if bias is not None:
        y = y + u * bias
    return y


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_fft_long_conv_equals_direct_convolution(length, bidirectional):
    rng = np.random.default_rng(length)
    c = 5
    u, k_fwd, bias = _rand(rng, 2, length, c), _rand(rng, length, c), _rand(rng, c)
    k_rev = _rand(rng, length, c) if bidirectional else None
    got = hyena.fft_long_conv(jnp.asarray(u), jnp.asarray(k_fwd), None if k_rev is None else jnp.asarray(k_rev),
                              jnp.asarray(bias))
    want = _direct_conv(u, k_fwd, k_rev, bias)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * max(1.0, math.sqrt(length)))


@pytest.mark.parametrize("length", [7, 64, 100])
def test_fft_long_conv_matches_reference_transcription(length):
    """The reference's ``HyenaFilter.forward`` (bidirectional kernel padding) + ``fftconv_ref``, in torch, [b, c, L]."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(7)
    c = 4
    u, k_fwd, k_rev, bias = _rand(rng, 2, length, c), _rand(rng, length, c), _rand(rng, length, c), _rand(rng, c)
    tu, tk, tkr = (torch.from_numpy(a.T.copy() if a.ndim == 2 else a.transpose(0, 2, 1).copy())
                   for a in (u, k_fwd, k_rev))
    L = length
    k = F.pad(tk, (0, L)) + F.pad(tkr.flip(-1), (L, 0))
    fft_size = 2 * L
    k_f = torch.fft.rfft(k, n=fft_size) / fft_size
    u_f = torch.fft.rfft(tu, n=fft_size)
    y = torch.fft.irfft(u_f * k_f, n=fft_size, norm="forward")[..., :L]
    ref = (y + tu * torch.from_numpy(bias)[:, None]).numpy().transpose(0, 2, 1)
    got = hyena.fft_long_conv(jnp.asarray(u), jnp.asarray(k_fwd), jnp.asarray(k_rev), jnp.asarray(bias))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4)


def test_short_conv_matches_torch_conv1d():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x, kernel, bias = _rand(rng, 2, 11, 6), _rand(rng, 3, 6), _rand(rng, 6)
    ref = torch.nn.functional.conv1d(torch.from_numpy(x.transpose(0, 2, 1).copy()),
                                     torch.from_numpy(kernel.T.copy()[:, None, :]), torch.from_numpy(bias),
                                     padding=2, groups=6)[..., :11].numpy().transpose(0, 2, 1)
    got = hyena.causal_depthwise_conv(jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("emb_dim", [3, 5])
def test_positional_features_match_reference(emb_dim):
    """``PositionalEmbedding(emb_dim, seq_len=l_max)`` of the reference, sliced to L <= l_max, and extended past it."""
    torch = pytest.importorskip("torch")
    l_max = 64
    t = torch.linspace(0, 1, l_max)[None, :, None]
    bands = (emb_dim - 1) // 2
    t_rescaled = torch.linspace(0, l_max - 1, l_max)[None, :, None]
    w = 2 * math.pi * t_rescaled / l_max
    f = torch.linspace(1e-4, bands - 1, bands)[None, None]
    z = torch.exp(-1j * f * w)
    z = torch.cat([t, z.real, z.imag], dim=-1)[0].numpy()
    for length in (1, 40, 64):
        got_z, got_t = hyena.positional_features(length, l_max, emb_dim)
        np.testing.assert_allclose(np.asarray(got_z), z[:length], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(got_t)[:, 0], t[0, :length, 0].numpy(), rtol=1e-6, atol=1e-6)
    longer, _ = hyena.positional_features(300, l_max, emb_dim)  # past l_max: same formula, same prefix
    np.testing.assert_allclose(np.asarray(longer)[:l_max], z, rtol=1e-5, atol=1e-5)
    # Decay rates: ExponentialModulation(d_model) deltas.
    deltas = torch.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, 8).abs().numpy()
    np.testing.assert_allclose(np.asarray(hyena.decay_rates(8)), deltas, rtol=1e-6)


def _filter_module(bidirectional=True):
    return hyena.HyenaFilter(channels=6, l_max=32, order=16, emb_dim=5, w=10.0, bidirectional=bidirectional)


def test_filters_are_length_agnostic():
    """Parameters do not depend on L; taps depend only on their index; any L runs, far beyond l_max."""
    flt = _filter_module()
    v8 = flt.init(jax.random.key(0), jnp.zeros((1, 8, 6)))
    v64 = flt.init(jax.random.key(0), jnp.zeros((1, 64, 6)))
    shapes = lambda v: {k: x.shape for k, x in traverse_util.flatten_dict(nn.unbox(v["params"])).items()}
    assert shapes(v8) == shapes(v64)
    taps = {}
    for length in (1, 5, 32, 77, 1000, 4096):
        k_fwd, k_rev = flt.apply(v8, length, method=hyena.HyenaFilter.filters)
        assert k_fwd.shape == k_rev.shape == (length, 6)
        assert bool(jnp.all(jnp.isfinite(k_fwd))) and bool(jnp.all(jnp.isfinite(k_rev)))
        taps[length] = (np.asarray(k_fwd), np.asarray(k_rev))
    for length in (5, 32, 77, 1000):
        np.testing.assert_allclose(taps[4096][0][:length], taps[length][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(taps[4096][1][:length], taps[length][1], rtol=1e-5, atol=1e-6)
    # The exponential modulation decays: late taps are far smaller than early ones.
    assert np.abs(taps[4096][0][-100:]).max() < 1e-3 * np.abs(taps[4096][0][:10]).max()
    y = flt.apply(v8, jnp.ones((2, 300, 6)))
    assert y.shape == (2, 300, 6)


def test_filter_parameters_and_init():
    flt = _filter_module()
    params = nn.unbox(flt.init(jax.random.key(1), jnp.zeros((1, 8, 6)))["params"])
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}
    assert flat["act/freq"].shape == (16,) and np.all(flat["act/freq"] == 10.0)  # Sin(w=10), shared by both MLPs
    assert flat["implicit_filter/in_proj/kernel"].shape == (5, 16)
    assert flat["implicit_filter/inner_1/kernel"].shape == (16, 16)
    assert flat["implicit_filter/out_proj/kernel"].shape == (16, 6) and "implicit_filter/out_proj/bias" not in flat
    assert "implicit_filter_rev/in_proj/kernel" in flat
    assert flat["bias"].shape == (6,)
    np.testing.assert_allclose(float(np.std(flat["implicit_filter/inner_0/kernel"])), 0.02, rtol=0.25)


# ----------------------------------------------------------------------------- the encoder

TINY = dict(hidden_dropout_prob=0.0)


def _tiny(**kw):
    return registry.get("m2-bert-tiny", **{**TINY, **kw})[0]


@functools.lru_cache(maxsize=1)
def _tiny_params():
    """Params of ``M2Model(_tiny())`` (they do not depend on the sequence length), shared by the tests."""
    return m2.M2Model(_tiny()).init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]


def _init(model, *args):
    """Eager init: its per-op executables are cached across tests (a jitted init recompiles per model)."""
    return model.init(jax.random.key(0), *args)["params"]


def _run(model, params, *args, **kwargs):
    """``model.apply`` under jit (eager dispatch of the many small ops is slow on CPU)."""
    fn = jax.jit(lambda p, *a: model.apply({"params": p}, *a, **kwargs))
    return fn(params, *args)


def _ids(rng, b, length, vocab=1000):
    return jnp.asarray(rng.integers(5, vocab, size=(b, length)), jnp.int32)


def test_encoder_forward_shapes_and_padding():
    """Right-padded rows give, at real positions, the outputs of the unpadded sequence; pad content is irrelevant."""
    cfg = _tiny()
    model = m2.M2Model(cfg)
    rng = np.random.default_rng(0)
    ids = _ids(rng, 2, 24)
    params = _tiny_params()
    n = 13
    mask = jnp.asarray(np.arange(24)[None, :] < np.array([[24], [n]]), jnp.int32)
    out = _run(model, params, ids, mask)
    assert out.last_hidden_state.shape == (2, 24, 64) and out.pooler_output.shape == (2, 64)
    alone = _run(model, params, ids[1:, :n]).last_hidden_state[0]
    np.testing.assert_allclose(np.asarray(out.last_hidden_state[1, :n]), np.asarray(alone), rtol=1e-4, atol=1e-4)
    assert np.all(np.asarray(out.last_hidden_state[1, n:]) == 0.0)
    other_pads = ids.at[1, n:].set(jnp.asarray(rng.integers(5, 1000, size=24 - n), jnp.int32))
    out2 = _run(model, params, other_pads, mask)
    np.testing.assert_allclose(np.asarray(out2.last_hidden_state), np.asarray(out.last_hidden_state),
                               rtol=1e-5, atol=1e-5)
    # The first row (no padding) is unaffected by the second row's padding.
    np.testing.assert_allclose(np.asarray(out.last_hidden_state[0]),
                               np.asarray(_run(model, params, ids[:1]).last_hidden_state[0]),
                               rtol=1e-5, atol=1e-5)


def test_encoder_is_bidirectional():
    """Changing a late token changes early outputs (the reverse filter), unlike a causal model."""
    cfg = _tiny()
    model = m2.M2Model(cfg)
    ids = _ids(np.random.default_rng(1), 1, 16)
    params = _tiny_params()
    a = _run(model, params, ids).last_hidden_state
    b = _run(model, params, ids.at[0, 12].set(3)).last_hidden_state
    assert float(jnp.abs(a[0, :10] - b[0, :10]).max()) > 1e-6
    causal = m2.M2Model(cfg.replace(bidirectional=False))
    pc = _init(causal, ids)
    a = _run(causal, pc, ids).last_hidden_state
    b = _run(causal, pc, ids.at[0, 12].set(3)).last_hidden_state
    np.testing.assert_allclose(np.asarray(a[0, :12]), np.asarray(b[0, :12]), atol=1e-6)


def test_heads_mlm_and_classification_with_padding():
    cfg = _tiny()
    rng = np.random.default_rng(2)
    ids = _ids(rng, 2, 20)
    mask = jnp.asarray(np.arange(20)[None, :] < np.array([[20], [11]]), jnp.int32)
    mlm = build_task_model(cfg, m2.M2Model, "mlm")
    p = _init(mlm, ids, mask)
    assert "pooler" not in p["encoder"]
    out = _run(mlm, p, ids, mask)
    assert out["logits"].shape == (2, 20, cfg.vocab_size) and out["logits"].dtype == jnp.float32
    alone = _run(mlm, p, ids[1:, :11])["logits"][0]
    np.testing.assert_allclose(np.asarray(out["logits"][1, :11]), np.asarray(alone), rtol=1e-4, atol=1e-4)
    picked = _run(mlm, p, ids, mask, masked_positions=jnp.array([[1, 3], [0, 10]]))
    np.testing.assert_allclose(np.asarray(picked["logits"][1, 1]), np.asarray(out["logits"][1, 10]), rtol=1e-5, atol=1e-5)
    clf = build_task_model(cfg, m2.M2Model, "sequence_classification", num_labels=3)
    pc = _init(clf, ids, mask)
    logits = _run(clf, pc, ids, mask)["logits"]
    assert logits.shape == (2, 3)
    np.testing.assert_allclose(np.asarray(logits[1]), np.asarray(_run(clf, pc, ids[1:, :11])["logits"][0]),
                               rtol=1e-4, atol=1e-4)


def test_mlm_training_reduces_loss():
    """A few Adam steps on a fixed batch: every parameter gets a gradient and the MLM loss falls."""
    cfg = _tiny(vocab_size=128)
    rng = np.random.default_rng(3)
    ids = _ids(rng, 4, 32, vocab=128)
    labels = ids
    masked = ids.at[:, ::4].set(4)
    model = build_task_model(cfg, m2.M2Model, "mlm")
    params = _init(model, masked)

    def loss_fn(p):
        logits = model.apply({"params": p}, masked)["logits"][:, ::4]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels[:, ::4]).mean()

    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss, g

    losses = []
    for i in range(30):
        params, state, loss, grads = step(params, state)
        losses.append(float(loss))
        if i == 0:
            flat = traverse_util.flatten_dict(nn.unbox(grads))
            silent = [k for k, g in flat.items() if float(jnp.abs(g).max()) == 0.0]
            assert not silent, f"parameters without gradient: {silent}"
    assert losses[-1] < 0.5 * losses[0], losses


def test_bfloat16_runs_close_to_float32():
    rng = np.random.default_rng(4)
    ids = _ids(rng, 2, 40)
    cfg = _tiny()
    model = m2.M2Model(cfg)
    params = _tiny_params()
    ref = _run(model, params, ids).last_hidden_state
    out = _run(m2.M2Model(cfg.replace(dtype="bfloat16")), params, ids).last_hidden_state
    assert out.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out)))
    rel = float(jnp.linalg.norm(out.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
    assert rel < 0.05, rel
    both = m2.M2Model(cfg.replace(dtype="bfloat16", param_dtype="bfloat16"))
    pb = _init(both, ids)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(nn.unbox(pb)))
    assert bool(jnp.all(jnp.isfinite(_run(both, pb, ids).last_hidden_state)))


def test_remat_and_variants_agree():
    rng = np.random.default_rng(5)
    ids = _ids(rng, 1, 16)
    cfg = _tiny()
    params = _tiny_params()
    a = _run(m2.M2Model(cfg), params, ids).last_hidden_state
    b = _run(m2.M2Model(cfg.replace(remat=True)), params, ids).last_hidden_state
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    for variant in (dict(mlp_linear="monarch"), dict(mlp_linear="dense"), dict(use_glu_mlp=False),
                    dict(residual_long_conv=False), dict(hyena_training_additions=True)):
        model = m2.M2Model(cfg.replace(**variant))
        p = _init(model, ids)
        assert bool(jnp.all(jnp.isfinite(_run(model, p, ids).last_hidden_state))), variant


def test_config_errors():
    with pytest.raises(ValueError, match="no field"):
        registry.get("m2-bert-tiny", attention_implementation="cudnn")
    with pytest.raises(KeyError, match="unknown model preset 'm2-bert-81m'"):
        registry.get("m2-bert-81m")
    with pytest.raises(ValueError, match="hyena_emb_dim"):
        registry.get("m2-bert-tiny", hyena_emb_dim=4)
    model = m2.M2Model(_tiny(max_position_embeddings=16))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.init(jax.random.key(0), jnp.zeros((1, 17), jnp.int32))


_MAX_ELEMENTS = re.compile(r"\b(?:f32|bf16|c64|f16|s32|pred)\[([\d,]+)\]")


def test_32k_tokens_on_cpu_without_quadratic_arrays():
    """Batch 1, 32,768 tokens, small config: compiles and runs; no buffer grows like L^2."""
    length = 32768
    cfg = _tiny(max_position_embeddings=length)
    model = m2.M2Model(cfg)
    ids = jnp.asarray(np.random.default_rng(6).integers(5, 1000, size=(1, length)), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), ids[:, :8])["params"]
    fwd = jax.jit(lambda p, x: model.apply({"params": p}, x).last_hidden_state)
    compiled = fwd.lower(params, ids).compile()
    biggest = max(math.prod(int(d) for d in m.group(1).split(",")) for m in _MAX_ELEMENTS.finditer(compiled.as_text()))
    assert biggest <= 8 * length * cfg.hidden_size, f"largest buffer has {biggest:,} elements (L^2 = {length**2:,})"
    mem = compiled.memory_analysis()
    if mem is not None:
        temp = mem.temp_size_in_bytes
        print(f"\n32k tokens: XLA temp buffers {temp / 2**20:.1f} MiB (one L x L float32 array: "
              f"{length**2 * 4 / 2**30:.0f} GiB); largest buffer {biggest:,} elements")
        assert temp < 2**30  # a single L x L float32 array would be 4 GiB
    out = compiled(params, ids)
    assert out.shape == (1, length, cfg.hidden_size) and bool(jnp.all(jnp.isfinite(out)))


def test_forward_working_set_does_not_grow_with_depth():
    """Each layer's filters are computed inside that layer (``HyenaFilter.filters(tie_to=...)``).

    The filters do not depend on the data; untied, XLA computes every layer's filters and their
    FFTs up front and keeps them all alive, so the inference working set grows with depth
    (measured before the tie: 21 MiB at 2 layers, 60 MiB at 8, at 4096 tokens).
    """
    length = 4096

    def temp_bytes(layers: int) -> int:
        cfg = _tiny(num_hidden_layers=layers, max_position_embeddings=length)
        model = m2.M2Model(cfg)
        ids = jnp.ones((1, length), jnp.int32)
        params = jax.eval_shape(model.init, jax.random.key(0), ids[:, :8])["params"]
        fwd = jax.jit(lambda p, x: model.apply({"params": p}, x).last_hidden_state)
        mem = fwd.lower(params, ids).compile().memory_analysis()
        if mem is None:
            pytest.skip("this backend reports no memory analysis")
        return mem.temp_size_in_bytes

    shallow, deep = temp_bytes(2), temp_bytes(8)
    print(f"\nXLA temporaries at {length} tokens: 2 layers {shallow / 2**20:.1f} MiB, 8 layers {deep / 2**20:.1f} MiB")
    assert deep < 1.25 * shallow


# ----------------------------------------------------------------------------- presets

BERT_BASE_LAYERS = 12 * (4 * (768 * 768 + 768) + 2 * 768 * 3072 + 3072 + 768 + 4 * 768)  # 85,054,464


def _abstract_params(cfg, task="base"):
    model = build_task_model(cfg, m2.M2Model, task, num_labels=2 if task == "sequence_classification" else None)
    shapes = jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, 8), jnp.int32)), jax.random.key(0))
    return nn.unbox(shapes["params"])


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _reference_count(cfg: m2.M2Config) -> tuple[int, int]:
    """(total with pooler, encoder layers) from the reference modules' sizes, by hand.

    Includes the reference's trainable positional features ``z [1, l_max, emb_dim]`` per filter,
    which jaxbert computes instead of storing.
    """
    d, m, k = cfg.hidden_size, cfg.intermediate_size, cfg.monarch_mlp_nblocks
    o, e, n_inner = cfg.hyena_filter_order, cfg.hyena_emb_dim, cfg.hyena_num_inner_mlps
    mlp = e * o + o + n_inner * (o * o + o) + o * d                      # implicit_filter (out_proj: no bias)
    filt = mlp * (2 if cfg.bidirectional else 1) + o + d + cfg.filter_l_max * e  # + Sin freq, bias D, z
    mixer = (d * 3 * d + 3 * d) + (3 * d * 3 + 3 * d) + filt * (2 if cfg.residual_long_conv else 1) + (d * d + d)
    glu = d * 2 * m // k + (m * d // k + d)
    layer = mixer + glu + 2 * d
    emb = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * d + 2 * d
    pooler = d * d + d
    return emb + cfg.num_hidden_layers * layer + pooler, cfg.num_hidden_layers * layer


@pytest.mark.parametrize("name,paper", [("m2-bert-80m", 80e6), ("m2-bert-110m", 110e6)])
def test_preset_parameter_counts(name, paper):
    cfg = registry.get(name)[0]
    params = _abstract_params(cfg)
    total = _count(params)
    layers = m2.non_embedding_param_count(params)
    ref_total, ref_layers = _reference_count(cfg)
    z_params = 2 * cfg.num_hidden_layers * cfg.filter_l_max * cfg.hyena_emb_dim
    assert total == ref_total - z_params and layers == ref_layers - z_params
    mlm = _count(_abstract_params(cfg, "mlm"))
    print(f"\n{name}: {total:,} params with pooler ({total / paper - 1:+.2%} vs the paper's {paper / 1e6:.0f}M), "
          f"{mlm:,} as MLM model; encoder layers {layers:,} (BERT-base layers {BERT_BASE_LAYERS:,}: "
          f"{layers / BERT_BASE_LAYERS - 1:+.2%}); reference module count {ref_total:,} "
          f"(+{z_params:,} stored positional features)")
    if name == "m2-bert-80m":
        assert abs(total / paper - 1) < 0.02
        assert abs(mlm / paper - 1) < 0.02
    else:
        # "Parameter-matched to BERT-base": the encoder layers match BERT-base's within 2%; the total
        # is larger because the 960-wide embedding table alone is 29.3M (BERT-base: 23.4M).
        assert abs(layers / BERT_BASE_LAYERS - 1) < 0.02
        assert 0.0 < total / paper - 1 < 0.06


def test_registry_presets():
    from jaxbert.models import registry
    for name in ("m2-bert-80m", "m2-bert-110m", "m2-bert-80m-32k", "m2-bert-tiny"):
        if name not in registry.names():
            pytest.skip("M2 presets not registered")
        cfg, backbone = registry.get(name)
        assert isinstance(cfg, m2.M2Config) and backbone is m2.M2Model
    cfg, _ = registry.get("m2-bert-80m-32k")
    assert cfg.max_position_embeddings == cfg.filter_l_max == 32768


# ----------------------------------------------------------------------------- retrieval and configs


def test_orthogonal_projection_loss():
    from jaxbert.objectives.long_retrieval import orthogonal_projection_loss

    q = jnp.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    docs = jnp.array([[[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]],      # positive parallel, negative orthogonal: 0
                      [[1.0, 1.0, 0.0], [0.0, -1.0, 0.0]]])    # cos+ = 1/sqrt2, cos- = -1
    loss, sums = orthogonal_projection_loss(q, docs, gamma=0.5)
    want = np.array([0.0, (1 - 1 / math.sqrt(2)) + 0.5 * 1.0])
    np.testing.assert_allclose(float(loss), want.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(sums["loss"]), want.sum(), rtol=1e-6)
    assert float(sums["weight"]) == 2.0
    with pytest.raises(ValueError, match="negative"):
        orthogonal_projection_loss(q, docs[:, :1])


def test_bbc_long_retrieval_set(tmp_path, data_dir):
    from jaxbert.data.long_retrieval import bbc_long_retrieval, split_article
    from jaxbert.eval.retrieval import load_retrieval_set

    assert split_article("Title here\n\nBody one.\n\nBody two.") == ("Title here", "Body one.\n\nBody two.")
    folder = bbc_long_retrieval(data_dir, tmp_path)
    rs = load_retrieval_set(folder / "test_queries.jsonl", folder / "test_corpus.jsonl", folder / "test_qrels.jsonl")
    assert len(rs.queries) == len(rs.docs) == 425
    assert all(len(d) > len(q) for q, d in zip(rs.queries, rs.docs))
    first = (data_dir / "bbc_news" / "test.jsonl").read_text(encoding="utf-8").splitlines()[0]
    import json
    title, body = split_article(json.loads(first)["text"])
    assert rs.queries[0] == title and rs.docs[0] == body and rs.qrels[rs.query_ids[0]] == {rs.doc_ids[0]: 1.0}
    pairs = [json.loads(l) for l in (folder / "train_pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(pairs) == 1699 and all(p["negative"] != p["positive"] for p in pairs)
    assert bbc_long_retrieval(data_dir, tmp_path) == folder  # cached


def test_experiment_configs_build_m2_models(tmp_path, monkeypatch, data_dir):
    from experiments.configs import m2_pretrain, m2_retrieval
    from jaxbert.models import registry

    c = m2_pretrain.get_config("tiny,runlocal")
    assert c.model.preset == "m2-bert-tiny" and not c.mlm.packing and c.mlm.rate == 0.30
    cfg, backbone = registry.get(c.model.preset)
    assert backbone is m2.M2Model
    monkeypatch.setenv("JAXBERT_CACHE", str(tmp_path))
    monkeypatch.setenv("JAXBERT_DATA", str(data_dir))
    r = m2_retrieval.get_config("tiny,runlocal")
    overrides = {k: v for k, v in dict(r.model.overrides).items() if v is not None}
    cfg, _ = registry.get(r.model.preset, **overrides)
    assert cfg.max_position_embeddings == cfg.filter_l_max == 8192 and r.batch_size == 1
    assert (tmp_path / "derived" / "bbc_long-v1" / "train_pairs.jsonl").is_file()


def test_mlm_pretraining_through_the_engine(tmp_path, data_dir):
    """``m2_pretrain.py`` through the training loop: trains, evaluates held-out MLM, exports params + config."""
    import json
    from experiments.configs import m2_pretrain
    from jaxbert.train.loop import train_and_evaluate

    c = m2_pretrain.get_config("tiny,runlocal")
    c.mlm.max_documents = 12
    c.mlm.validation_ids = c.mlm.validation_ids[:3]
    c.mlm.test_ids = c.mlm.test_ids[:2]
    c.mlm.tokenizer.out_dir = str(tmp_path / "tokenizer")
    c.progress = False
    c.tensorboard = False
    c.num_train_steps = 6
    c.eval_every = 3
    result = train_and_evaluate(c, tmp_path / "run")
    assert result["status"] == "done"
    val = result["eval"]["validation"]
    assert np.isfinite(val["loss"]) and val["num_predictions"] > 50
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    exported = json.loads((tmp_path / "run" / "export" / "config.json").read_text())
    assert exported["model_type"] == "m2_bert"  # reference key names: jaxbert/convert/m2.py
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()
    cfg, params = m2.load_exported(tmp_path / "run" / "export")
    ids = jnp.ones((1, 16), jnp.int32)
    out = m2.M2Model(cfg.replace(add_pooling_layer=False)).apply({"params": params["encoder"]}, ids)
    assert out.last_hidden_state.shape == (1, 16, cfg.hidden_size)


def test_every_parameter_has_logical_axes_known_to_the_mesh_rules():
    from jaxbert.train.mesh import DEFAULT_RULES

    cfg = registry.get("m2-bert-tiny")[0]
    boxed = jax.eval_shape(lambda r: m2.M2Model(cfg).init(r, jnp.zeros((1, 8), jnp.int32)), jax.random.key(0))["params"]
    flat = traverse_util.flatten_dict(boxed, is_leaf=lambda _, x: isinstance(x, nn.Partitioned))
    known = {name for name, _ in DEFAULT_RULES}
    for path, leaf in flat.items():
        assert isinstance(leaf, nn.Partitioned), f"{'/'.join(path)} has no logical axis names"
        assert len(leaf.names) == len(leaf.value.shape), path
        assert set(leaf.names) - {None} <= known, (path, leaf.names)
    mixer = flat[("layer_0", "mixer", "in_linear", "kernel")]
    assert mixer.names == ("embed", None, "mlp")


def test_retrieval_finetuning_through_the_engine(tmp_path, monkeypatch, data_dir):
    """``m2_retrieval.py`` (batch size 1, in-sample negative) through the contrastive task: trains and
    evaluates nDCG@10 on the bbc_news long-document set (a smoke-sized run)."""
    from experiments.configs import m2_retrieval
    from jaxbert.train.loop import train_and_evaluate

    monkeypatch.setenv("JAXBERT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXBERT_DATA", str(data_dir))
    c = m2_retrieval.get_config("tiny,runlocal")
    c.evals.bbc_long.query_limit = 8
    c.progress = False
    c.tensorboard = False
    c.data.max_length = 512
    c.data.buckets = (512,)
    result = train_and_evaluate(c, tmp_path / "run")
    assert result["status"] == "done"
    ev = result["eval"]["bbc_long"]
    assert ev["num_queries"] == 8 and 0.0 <= ev["ndcg@10"] <= 1.0


# ----------------------------------------------------------------------------- parity with the reference


def _reference_state_dict(cfg: m2.M2Config, rng) -> dict:
    """Random weights under the reference's names and layouts (torch [out, in]; blockdiag [k, out/k, in/k])."""
    d, m, k = cfg.hidden_size, cfg.intermediate_size, cfg.monarch_mlp_nblocks
    o, e = cfg.hyena_filter_order, cfg.hyena_emb_dim
    r = lambda *s, std=0.3: (rng.standard_normal(s) * std).astype(np.float32)
    sd = {"embeddings.word_embeddings.weight": r(cfg.vocab_size, d), "embeddings.position_embeddings.weight":
          r(cfg.max_position_embeddings, d), "embeddings.token_type_embeddings.weight": r(2, d),
          "embeddings.LayerNorm.weight": 1 + r(d, std=0.1), "embeddings.LayerNorm.bias": r(d, std=0.1),
          "pooler.dense.weight": r(d, d), "pooler.dense.bias": r(d)}
    z, _ = hyena.positional_features(cfg.filter_l_max, cfg.filter_l_max, e)
    for i in range(cfg.num_hidden_layers):
        a = f"encoder.layer.{i}.attention"
        sd.update({f"{a}.in_linear.weight": r(3 * d, d), f"{a}.in_linear.bias": r(3 * d),
                   f"{a}.short_filter.weight": r(3 * d, 1, 3), f"{a}.short_filter.bias": r(3 * d),
                   f"{a}.out_linear.weight": r(d, d), f"{a}.out_linear.bias": r(d)})
        for f in ("filter_fn", "filter_fn2"):
            base = f"{a}.{f}"
            sd[f"{base}.bias"] = r(d, std=1.0)
            sd[f"{base}.pos_emb.z"] = np.asarray(z)[None]
            freq = (10 + r(1, o, std=1.0)).astype(np.float32)
            for mlp in ("implicit_filter", "implicit_filter_rev"):
                sd[f"{base}.{mlp}.0.weight"], sd[f"{base}.{mlp}.0.bias"] = r(o, e), r(o)
                for j in (2, 4):
                    sd[f"{base}.{mlp}.{j}.weight"], sd[f"{base}.{mlp}.{j}.bias"] = r(o, o, std=0.1), r(o)
                sd[f"{base}.{mlp}.6.weight"] = r(d, o)
                for j in (1, 3, 5):
                    sd[f"{base}.{mlp}.{j}.freq"] = freq  # one shared Sin module
        mm = f"encoder.layer.{i}.mlp"
        sd.update({f"{mm}.gated_layers.weight": r(k, 2 * m // k, d // k), f"{mm}.wo.weight": r(k, d // k, m // k),
                   f"{mm}.wo.bias": r(d), f"{mm}.layernorm.weight": 1 + r(d, std=0.1),
                   f"{mm}.layernorm.bias": r(d, std=0.1)})
    return {"bert." + key: v for key, v in sd.items()}


def _reference_forward(sd: dict, cfg: m2.M2Config, input_ids: np.ndarray):
    """HazyResearch/m2 ``BertModel`` forward (M2 path), transcribed in torch from bert_layers.py and mm/."""
    import torch
    import torch.nn.functional as F

    T = lambda key: torch.from_numpy(np.array(sd["bert." + key], copy=True))
    d, m, eps = cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps
    ids = torch.from_numpy(input_ids).long()
    b, L = ids.shape
    x = (F.embedding(ids, T("embeddings.word_embeddings.weight"))
         + F.embedding(torch.zeros_like(ids), T("embeddings.token_type_embeddings.weight"))
         + F.embedding(torch.arange(L)[None].expand(b, L), T("embeddings.position_embeddings.weight")))
    x = F.layer_norm(x, (d,), T("embeddings.LayerNorm.weight"), T("embeddings.LayerNorm.bias"), eps)

    def hyena_filter(base, mlp):  # HyenaFilter.filter(L): pos_emb -> implicit MLP -> modulation
        z = T(f"{base}.pos_emb.z")[:, :L]
        t = torch.linspace(0, 1, cfg.filter_l_max)[None, :, None][:, :L]
        h = z
        for j in (0, 2, 4):
            h = torch.sin(cfg.hyena_w_mod * T(f"{base}.{mlp}.{j + 1}.freq") * F.linear(
                h, T(f"{base}.{mlp}.{j}.weight"), T(f"{base}.{mlp}.{j}.bias")))
        h = F.linear(h, T(f"{base}.{mlp}.6.weight"))
        deltas = torch.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, d)[None, None]
        h = h * torch.exp(-t * deltas.abs())
        return h.transpose(1, 2)[0]  # "c l d -> c d l", [0]

    def long_conv(u, base):  # HyenaFilter.forward + fftconv_ref, u [b, d, L]
        k = F.pad(hyena_filter(base, "implicit_filter"), (0, L)) + F.pad(
            hyena_filter(base, "implicit_filter_rev").flip(-1), (L, 0))
        n = 2 * L
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * (torch.fft.rfft(k, n=n) / n), n=n, norm="forward")[..., :L]
        return y + u * T(f"{base}.bias")[None, :, None]

    blockdiag = lambda x, w: torch.einsum("...kp,kqp->...kq", x.reshape(*x.shape[:-1], w.shape[0], -1), w).flatten(-2)
    for i in range(cfg.num_hidden_layers):
        a, mm = f"encoder.layer.{i}.attention", f"encoder.layer.{i}.mlp"
        u_orig = x
        u = F.linear(x, T(f"{a}.in_linear.weight"), T(f"{a}.in_linear.bias")).transpose(1, 2)
        uc = F.conv1d(u, T(f"{a}.short_filter.weight"), T(f"{a}.short_filter.bias"), padding=2, groups=3 * d)[..., :L]
        x1, x2, v = uc.split(d, dim=1)
        y = long_conv(v * x1, f"{a}.filter_fn") * x2 + long_conv(u_orig.transpose(1, 2), f"{a}.filter_fn2")
        h = F.linear(y.transpose(1, 2), T(f"{a}.out_linear.weight"), T(f"{a}.out_linear.bias"))
        g = blockdiag(h, T(f"{mm}.gated_layers.weight"))
        g = F.gelu(g[..., :m]) * g[..., m:]
        out = blockdiag(g, T(f"{mm}.wo.weight")) + T(f"{mm}.wo.bias")
        x = F.layer_norm(out + h, (d,), T(f"{mm}.layernorm.weight"), T(f"{mm}.layernorm.bias"), eps)
    pooled = torch.tanh(F.linear(x[:, 0], T("pooler.dense.weight"), T("pooler.dense.bias")))
    return x.numpy(), pooled.numpy()


def test_matches_reference_transcription_with_converted_weights():
    pytest.importorskip("torch")
    cfg = m2.M2Config(vocab_size=50, hidden_size=16, num_hidden_layers=2, intermediate_size=32,
                      max_position_embeddings=32, hyena_filter_order=8, hidden_dropout_prob=0.0)
    rng = np.random.default_rng(0)
    sd = _reference_state_dict(cfg, rng)
    sd["cls.predictions.decoder.bias"] = np.zeros(50, np.float32)  # a head key: reported unused
    params, report = m2.params_from_reference(sd, cfg)
    assert report["positional_features_max_abs_diff"] < 1e-6
    assert report["unused"] == ["cls.predictions.decoder.bias"]
    ids = rng.integers(1, 50, size=(2, 20)).astype(np.int32)
    ref_h, ref_pooled = _reference_forward(sd, cfg, ids)
    model = m2.M2Model(cfg)
    abstract = jax.eval_shape(lambda r: model.init(r, jnp.asarray(ids)), jax.random.key(0))["params"]
    got_shapes = jax.tree.map(lambda x: tuple(np.shape(x)), params)
    want_shapes = jax.tree.map(lambda x: tuple(x.shape), nn.unbox(abstract))
    assert got_shapes == want_shapes
    out = _run(model, jax.tree.map(jnp.asarray, params), jnp.asarray(ids))
    err = float(np.abs(np.asarray(out.last_hidden_state) - ref_h).max())
    print(f"\nM2 vs reference transcription: max abs diff {err:.2e} (hidden), "
          f"{float(np.abs(np.asarray(out.pooler_output) - ref_pooled).max()):.2e} (pooled)")
    np.testing.assert_allclose(np.asarray(out.last_hidden_state), ref_h, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(out.pooler_output), ref_pooled, rtol=1e-4, atol=1e-4)
    with pytest.raises(KeyError, match="in_linear"):
        m2.params_from_reference({k: v for k, v in sd.items() if "layer.1.attention.in_linear.weight" not in k}, cfg)


def test_adapter_extensions_and_prefix_error():
    """Adapters sit at the block's extension sites (identity at init); prefix tuning (attention keys) is refused."""
    from jaxbert.peft.adapters import AttentionAdapter, MlpAdapter

    ids = _ids(np.random.default_rng(8), 1, 12)
    cfg = _tiny()
    params = _tiny_params()
    ext_cfg = cfg.replace(extensions=(AttentionAdapter(bottleneck=8), MlpAdapter(bottleneck=8)))
    ext_model = m2.M2Model(ext_cfg)
    ext_params = _init(ext_model, ids)
    assert {"adapter_attention", "adapter_mlp"} <= set(ext_params["layer_1"])
    merged = dict(nn.unbox(ext_params))
    for name, value in nn.unbox(params).items():
        merged[name] = {**merged[name], **value} if isinstance(value, dict) and name.startswith("layer_") else value
    a = _run(m2.M2Model(cfg), params, ids).last_hidden_state
    b = _run(ext_model, merged, ids).last_hidden_state
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)

    class FakePrefix:
        site = "attention_kv"
    with pytest.raises(ValueError, match="no attention"):
        cfg.replace(extensions=(FakePrefix(),))
