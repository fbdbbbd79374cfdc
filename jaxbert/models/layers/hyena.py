"""Long convolutions for Monarch Mixer / Hyena: implicit filters, FFT convolution, short depthwise convolution.

Everything here is channel-last (``[batch, length, channels]``) and works for any length ``L``
given at call time: no parameter depends on a maximum length.

**Implicit filter** (Hyena, Poli et al. 2023; ``HyenaFilter`` of HazyResearch/m2
``bert/src/mm/hyena_utils.py``). For positions ``i = 0 .. L-1`` the positional features are::

    t_i = i / (l_max - 1)                                       (linspace(0, 1, l_max) extended past l_max)
    w_i = 2 pi i / l_max
    z_i = [t_i, cos(f_1 w_i), ..., cos(f_B w_i), -sin(f_1 w_i), ..., -sin(f_B w_i)]
    f   = linspace(1e-4, B - 1, B),  B = (emb_dim - 1) // 2

(the real and imaginary parts of ``exp(-1j f w)``). A small MLP ``emb_dim -> order -> (order ->
order) x num_inner_mlps -> channels`` with ``sin(w_mod * freq * x)`` activations (one trainable
``freq [order]``, initialised to ``w`` and shared by the forward and reverse MLPs, as the
reference shares its ``Sin`` module) maps ``z_i`` to the filter tap ``h_i [channels]``, which is
multiplied by an exponential decay ``exp(-t_i |delta_c|)`` with ``delta`` spaced linearly in
``[log(target) / slow_decay_pct, log(target) / fast_decay_pct]`` over channels (fixed, not
trained; ``fast=0.3, slow=1.5, target=1e-2, shift=0``).

``l_max`` is a hyper-parameter (the reference's ``long_conv_l_max``), not a parameter shape: for
``L <= l_max`` the taps are exactly the reference's (which slices features precomputed for
``l_max``); for ``L > l_max`` the same formulas are evaluated further (``t > 1``, the decay keeps
decaying). A tap depends only on its index, never on ``L``, so right-padding a sequence does not
change the filter seen by its real tokens. Deviation: the reference registers ``z`` as a
parameter trained with learning rate 1e-5 (``l_max x emb_dim`` numbers per filter); here it is
computed, which is what makes the filter length-agnostic.

**Long convolution** by FFT of size ``2L`` (``jnp.fft.rfft``; no wrap-around), computed in
float32 whatever the compute dtype. Causal: ``y_t = sum_{d>=0} k_d u_{t-d}``. Bidirectional
(M2-BERT): the kernel of length ``2L`` is ``[k_fwd, flip(k_rev)]``, so::

    y_t = sum_{d>=0} k_fwd[d] u_{t-d} + sum_{d>=1} k_rev[d-1] u_{t+d} + D * u_t

with ``D [channels]`` the per-channel skip ("bias") term. Cost ``O(L log L)`` per channel and
``O(L)`` memory: no ``L x L`` array exists anywhere.

Initialisation (the reference after ``BertPreTrainedModel.post_init``, which re-initialises every
``nn.Linear`` to ``Normal(0, initializer_range)`` with zero bias): filter MLP kernels
``Normal(0, initializer_range)``, biases 0; ``freq = w``; ``D ~ Normal(0, 1)`` (``torch.randn``);
short convolution (``nn.Conv1d``, untouched by ``post_init``) weight and bias
``U(-1/sqrt(kernel_size), 1/sqrt(kernel_size))``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from jaxbert.models.layers.initializers import dense_init, zeros_init


def positional_features(length: int, l_max: int, emb_dim: int) -> tuple[jax.Array, jax.Array]:
    """``(z [L, emb_dim], t [L, 1])`` float32 features of positions ``0 .. L-1`` (module docstring)."""
    if emb_dim < 3 or emb_dim % 2 == 0:
        raise ValueError(f"emb_dim must be odd and >= 3 (time, cosine and sine bands), got {emb_dim}")
    if l_max < 2:
        raise ValueError(f"l_max must be >= 2, got {l_max}")
    bands = (emb_dim - 1) // 2
    i = np.arange(length, dtype=np.float64)[:, None]
    t = i / (l_max - 1)
    w = 2 * math.pi * i / l_max
    f = np.linspace(1e-4, bands - 1, bands)[None, :]
    z = np.concatenate([t, np.cos(f * w), -np.sin(f * w)], axis=-1)
    return jnp.asarray(z, jnp.float32), jnp.asarray(t, jnp.float32)


def decay_rates(channels: int, fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5,
                target: float = 1e-2) -> jax.Array:
    """``|delta| [channels]`` of the exponential modulation (fixed, as the reference's buffer)."""
    max_decay = math.log(target) / fast_decay_pct
    min_decay = math.log(target) / slow_decay_pct
    return jnp.abs(jnp.linspace(min_decay, max_decay, channels, dtype=jnp.float32))


def exponential_modulation(t: jax.Array, h: jax.Array, fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5,
                           target: float = 1e-2, shift: float = 0.0) -> jax.Array:
    """``h [L, c] * (exp(-t |delta|) + shift)``."""
    deltas = decay_rates(h.shape[-1], fast_decay_pct, slow_decay_pct, target)
    return h * (jnp.exp(-t * deltas) + shift)


def bidirectional_kernel(k_fwd: jax.Array, k_rev: jax.Array | None) -> jax.Array:
    """The length-``2L`` kernel ``[k_fwd, flip(k_rev)]`` (``[L, c]`` each) of a bidirectional convolution."""
    if k_rev is None:
        return k_fwd
    return jnp.concatenate([k_fwd, jnp.flip(k_rev, axis=0)], axis=0)


def fft_long_conv(u: jax.Array, k_fwd: jax.Array, k_rev: jax.Array | None = None,
                  bias: jax.Array | None = None) -> jax.Array:
    """Per-channel long convolution of ``u [b, L, c]`` with ``k_fwd [L, c]`` (and ``k_rev [L, c]``) via FFT.

    Causal when ``k_rev`` is None, bidirectional otherwise (module docstring); ``bias [c]`` adds
    ``bias * u``. Computed in float32; returns ``u.dtype``.
    """
    length = u.shape[-2]
    if k_fwd.shape[0] != length or (k_rev is not None and k_rev.shape[0] != length):
        raise ValueError(f"filters of length {k_fwd.shape[0]} for a sequence of length {length}")
    n = 2 * length
    uf = u.astype(jnp.float32)
    k = bidirectional_kernel(k_fwd.astype(jnp.float32), None if k_rev is None else k_rev.astype(jnp.float32))
    y = jnp.fft.irfft(jnp.fft.rfft(uf, n=n, axis=-2) * jnp.fft.rfft(k, n=n, axis=0), n=n, axis=-2)[..., :length, :]
    if bias is not None:
        y = y + uf * bias.astype(jnp.float32)
    return y.astype(u.dtype)


def _after(x: jax.Array, dep: jax.Array) -> jax.Array:
    """``x`` unchanged, but computed (for XLA) from ``dep``, so nothing that uses it can run before ``dep``.

    Adds ``0 * isnan(dep[0])`` (always exactly zero, also for non-finite ``dep``).
    ``lax.optimization_barrier`` would say the same, but XLA:CPU removes barriers before scheduling.
    """
    first = jax.lax.stop_gradient(dep.reshape(-1)[0])
    return x + jnp.zeros((), x.dtype) * jnp.isnan(first).astype(x.dtype)


def causal_depthwise_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """``y_t = sum_j kernel[j] * x_{t - (K-1) + j} (+ bias)`` per channel; ``x [b, L, c]``, ``kernel [K, c]``.

    This is ``nn.Conv1d(groups=c, padding=K-1)(x)[..., :L]`` of the reference (cross-correlation,
    zero history before position 0).
    """
    size = kernel.shape[0]
    length = x.shape[-2]
    xp = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(size - 1, 0), (0, 0)])
    y = sum(xp[..., j:j + length, :] * kernel[j].astype(x.dtype) for j in range(size))
    if bias is not None:
        y = y + bias.astype(x.dtype)
    return y


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


class ShortConv(nn.Module):
    """Causal depthwise convolution of width ``kernel_size`` over ``[b, L, *channel_shape]``.

    Parameters ``kernel [kernel_size, *channel_shape]``, ``bias [*channel_shape]``.
    """

    kernel_size: int = 3
    channel_axes: tuple = ("mlp",)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channel_shape = x.shape[2:]
        bound = 1.0 / math.sqrt(self.kernel_size)
        kernel = self.param("kernel", nn.with_logical_partitioning(_uniform(bound), (None, *self.channel_axes)),
                            (self.kernel_size, *channel_shape), self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(_uniform(bound), tuple(self.channel_axes)),
                          channel_shape, self.param_dtype)
        flat = x.reshape(x.shape[:2] + (-1,)).astype(self.dtype)
        y = causal_depthwise_conv(flat, kernel.reshape(self.kernel_size, -1), bias.reshape(-1))
        return y.reshape(x.shape)


class Sin(nn.Module):
    """``sin(w_mod * freq * x)`` with a trainable ``freq [dim]`` initialised to ``w``."""

    dim: int
    w: float = 10.0
    w_mod: float = 1.0
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        freq = self.param("freq", nn.with_logical_partitioning(lambda k, s, d: jnp.full(s, self.w, d), (None,)),
                          (self.dim,), self.param_dtype)
        return jnp.sin(self.w_mod * freq.astype(x.dtype) * x)


class FilterMLP(nn.Module):
    """``emb_dim -> order -> (order -> order) x num_inner -> channels`` with the given activation."""

    channels: int
    order: int = 16
    num_inner_mlps: int = 2
    initializer_range: float = 0.02
    channel_axis: str | None = "mlp"
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z, act):
        dense = lambda n, axes, name, bias=True: nn.Dense(
            n, use_bias=bias, dtype=jnp.float32, param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(dense_init(self.initializer_range), axes),
            bias_init=nn.with_logical_partitioning(zeros_init, (axes[1],)), name=name)
        h = act(dense(self.order, (None, None), "in_proj")(z))
        for i in range(self.num_inner_mlps):
            h = act(dense(self.order, (None, None), f"inner_{i}")(h))
        return dense(self.channels, (None, self.channel_axis), "out_proj", bias=False)(h)


class HyenaFilter(nn.Module):
    """Implicit long filter generator (module docstring). Call ``filters(L)`` or ``__call__(u)``.

    Parameters: ``freq [order]``, ``implicit_filter/{in_proj,inner_i,out_proj}``,
    ``implicit_filter_rev/...`` (bidirectional), ``bias [channels]`` (the ``D`` skip term).
    Filter taps are always computed in float32 (they feed the float32 FFT); ``param_dtype`` is the
    storage dtype of the parameters.
    """

    channels: int
    l_max: int = 128
    order: int = 16
    emb_dim: int = 3
    w: float = 1.0
    w_mod: float = 1.0
    num_inner_mlps: int = 2
    bidirectional: bool = False
    modulate: bool = True
    normalized: bool = False
    use_bias: bool = True
    fast_decay_pct: float = 0.3
    slow_decay_pct: float = 1.5
    target: float = 1e-2
    shift: float = 0.0
    initializer_range: float = 0.02
    channel_axis: str | None = "mlp"
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.act = Sin(self.order, self.w, self.w_mod, self.param_dtype)
        mlp = lambda name: FilterMLP(self.channels, self.order, self.num_inner_mlps, self.initializer_range,
                                     self.channel_axis, self.param_dtype, name=name)
        self.implicit_filter = mlp("implicit_filter")
        if self.bidirectional:
            self.implicit_filter_rev = mlp("implicit_filter_rev")
        self.bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.normal(1.0), (self.channel_axis,)),
                               (self.channels,), self.param_dtype)

    def _taps(self, mlp, z: jax.Array, t: jax.Array) -> jax.Array:
        h = mlp(z, self.act)
        if self.modulate:
            h = exponential_modulation(t, h, self.fast_decay_pct, self.slow_decay_pct, self.target, self.shift)
        if self.normalized:
            h = h / jnp.sum(jnp.abs(h), axis=-1, keepdims=True)
        return h.astype(jnp.float32)

    def filters(self, length: int, tie_to: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
        """``(k_fwd [L, channels], k_rev [L, channels] or None)``.

        ``tie_to`` (the input the filters will convolve) makes the filter computation wait for that
        input (:func:`_after`). The filters do not depend on the data, so without it XLA is free to
        compute every layer's filters and their spectra at the start of the forward and keep all
        of them alive until their layer runs: at 8k tokens that was 1.6 of the 2.1 GB of an
        m2-bert-80m forward's temporaries (456 MB with the tie). Values are unchanged.
        """
        z, t = positional_features(length, self.l_max, self.emb_dim)
        if tie_to is not None:
            z = _after(z, tie_to)
        k_fwd = self._taps(self.implicit_filter, z, t)
        k_rev = self._taps(self.implicit_filter_rev, z, t) if self.bidirectional else None
        return k_fwd, k_rev

    def skip(self) -> jax.Array | None:
        """The ``D [channels]`` skip term (None when ``use_bias=False``)."""
        return self.bias if self.use_bias else None

    def __call__(self, u: jax.Array) -> jax.Array:
        """Long convolution of ``u [b, L, channels]`` with this filter (plus ``D u``)."""
        k_fwd, k_rev = self.filters(u.shape[-2], tie_to=u)
        return fft_long_conv(u, k_fwd, k_rev, self.skip())
