"""ModernBERT checkpoint parity: transformers' ``ModernBertModel`` <-> jaxbert's configurable encoder.

A small randomly initialised ``transformers.ModernBertModel`` (fp32, eager attention; global and
sliding-window layers both present, sequences longer than the window, right padding) is saved in
the HF format, loaded with :func:`jaxbert.convert.hf.load_pretrained` and must give the same last
hidden states on every real token within 1e-4 — padded and unpadded execution, both attention
implementations. The export goes back the other way (bitwise state dict, same outputs), and the
MLM head (``ModernBertForMaskedLM``) converts with its tied decoder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxbert.convert.hf import load_pretrained, read_safetensors, save_pretrained
from jaxbert.models import registry
from jaxbert.models.modernbert import hf as modernbert_hf
from jaxbert.models.transformer.model import EncoderConfig
from jaxbert.models.layers import unpad

TOL = 1e-4
WINDOW = 16  # local_attention: a token sees |i - j| <= 8
LENGTHS = [40, 23, 9, 40]  # longer than the window, with padding


def small_config(**kw) -> transformers.ModernBertConfig:
    base = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                max_position_embeddings=128, local_attention=WINDOW, global_attn_every_n_layers=3,
                pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
                global_rope_theta=50000.0, local_rope_theta=2000.0, attn_implementation="eager")
    base.update(kw)
    return transformers.ModernBertConfig(**base)


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values in every parameter (norm scales too), so a swapped or skipped weight shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def batch(vocab: int, lengths=LENGTHS, seed: int = 0):
    rng = np.random.default_rng(seed)
    l = max(lengths)
    ids = rng.integers(3, vocab, (len(lengths), l)).astype(np.int64)
    mask = (np.arange(l)[None] < np.asarray(lengths)[:, None]).astype(np.int64)
    ids[mask == 0] = 0
    return ids, mask


def torch_hidden(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = small_config()
    assert cfg.layer_types == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    model = transformers.ModernBertModel(cfg).eval()
    perturb(model)
    path = tmp_path_factory.mktemp("modernbert_small")
    model.save_pretrained(path)
    return path, model


def real(x, mask):
    return np.asarray(x)[np.asarray(mask).astype(bool)]


def test_config_reads_modernbert(hf_dir):
    path, model = hf_dir
    pre = load_pretrained(path)
    cfg = pre.config
    assert isinstance(cfg, EncoderConfig) and cfg.model_type == "modernbert"
    assert cfg.attention_layer_types == ("global", "sliding", "sliding", "global")
    assert (cfg.rope_theta, cfg.local_rope_theta, cfg.local_attention) == (50000.0, 2000.0, WINDOW)
    assert cfg.norm_position == "pre" and not cfg.norm_bias and not cfg.first_layer_attention_norm
    assert "attention_norm" not in pre.params["layer_0"] and "attention_norm" in pre.params["layer_1"]


@pytest.mark.parametrize("implementation", ["xla", "dot_product_attention"])
def test_last_hidden_state_parity_padded_and_unpadded(hf_dir, implementation):
    path, model = hf_dir
    ids, mask = batch(model.config.vocab_size)
    ref = torch_hidden(model, ids, mask)
    pre = load_pretrained(path, attention_implementation=implementation)
    apply = jax.jit(lambda p, i, m, u=None: pre.model.apply({"params": p}, i, m, unpad_index=u).last_hidden_state)
    out = apply(pre.params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
    diff = np.abs(real(out, mask) - real(ref, mask)).max()
    print(f"[parity] ModernBERT {implementation} padded: max |jax - torch| = {diff:.2e}")
    assert diff < TOL
    index = unpad.plan(mask)
    assert index.shape[0] < len(LENGTHS)  # the short rows share a stream row
    out_u = apply(pre.params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), jnp.asarray(index))
    diff_u = np.abs(real(out_u, mask) - real(ref, mask)).max()
    print(f"[parity] ModernBERT {implementation} unpadded: max |jax - torch| = {diff_u:.2e}")
    assert diff_u < TOL
    assert np.all(np.asarray(out_u)[mask == 0] == 0)


def test_window_matters(hf_dir):
    """The sliding layers really are local: a global-only model gives different outputs."""
    path, model = hf_dir
    ids, mask = batch(model.config.vocab_size)
    pre = load_pretrained(path)
    glob = load_pretrained(path, layer_types=("global",) * 4)
    a = pre.model.apply({"params": pre.params}, ids.astype(np.int32), mask.astype(np.int32)).last_hidden_state
    b = glob.model.apply({"params": glob.params}, ids.astype(np.int32), mask.astype(np.int32)).last_hidden_state
    assert np.abs(real(a, mask) - real(b, mask)).max() > 1e-3


def test_export_round_trip(hf_dir, tmp_path):
    path, model = hf_dir
    pre = load_pretrained(path)
    out = save_pretrained(tmp_path / "export", pre.params, pre.config)
    a, b = read_safetensors(path), read_safetensors(out)
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    back = transformers.ModernBertModel.from_pretrained(out, attn_implementation="eager").eval()
    ids, mask = batch(model.config.vocab_size, seed=1)
    assert np.abs(real(torch_hidden(back, ids, mask), mask) - real(torch_hidden(model, ids, mask), mask)).max() == 0


def test_masked_lm_head_parity(tmp_path):
    torch.manual_seed(1)
    cfg = small_config(num_hidden_layers=3)
    hf = transformers.ModernBertForMaskedLM(cfg).eval()
    perturb(hf, seed=1)
    hf.tie_weights()
    hf.save_pretrained(tmp_path / "mlm")
    pre = load_pretrained(tmp_path / "mlm", task="mlm")
    assert not pre.report.missing and not pre.report.unexpected
    ids, mask = batch(cfg.vocab_size)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    out = pre.model.apply({"params": pre.params}, ids.astype(np.int32), mask.astype(np.int32))["logits"]
    diff = np.abs(real(out, mask) - real(ref, mask)).max()
    print(f"[parity] ModernBertForMaskedLM logits: max |jax - torch| = {diff:.2e}")
    assert diff < TOL
    assert "bias" not in pre.params["mlm_head"]["transform"]  # classifier_bias=False
    out_dir = save_pretrained(tmp_path / "mlm_export", pre.params, pre.config, task="mlm")
    back = transformers.ModernBertForMaskedLM.from_pretrained(out_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        again = back(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    assert np.abs(again - ref).max() == 0


def test_unsupported_exports_are_clear():
    with pytest.raises(ValueError, match="not expressible as a transformers ModernBertConfig"):
        modernbert_hf.config_to_hf(registry.get("mosaicbert-tiny", model_type="modernbert")[0])
    with pytest.raises(ValueError, match="rope_type"):
        modernbert_hf.config_from_hf({"model_type": "modernbert",
                                      "rope_parameters": {"full_attention": {"rope_type": "yarn"}}})
