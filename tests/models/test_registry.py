"""The architecture registry (jaxbert/models/registry.py): one spec per model_type, lookups, clear errors."""

from __future__ import annotations

import json

import pytest

from jaxbert.convert.hf import load_pretrained, save_pretrained
from jaxbert.convert.report import CheckpointMismatchError
from jaxbert.models import registry
from jaxbert.models.architecture import ArchitectureSpec
from jaxbert.models.bert.model import BertConfig, BertModel
from jaxbert.models.transformer.model import Encoder, EncoderConfig


def test_every_family_registered_once():
    assert sorted(registry.specs()) == ["bert", "distilbert", "jaxbert-encoder", "llama", "m2_bert", "modernbert",
                                        "qwen2"]
    for model_type, spec in registry.specs().items():
        assert spec.model_type == model_type and spec.kind in ("encoder", "decoder")
        if spec.has_hf_format:
            assert "base" in spec.hf_architectures and "base" in spec.keys.heads, model_type


def test_presets_belong_to_their_spec():
    """Every preset's config has its spec's model_type and config class; get() returns that spec's backbone."""
    for name in registry.names():
        cfg, backbone = registry.get(name)
        spec = registry.spec_of(cfg)
        assert name in spec.presets and backbone is spec.backbone and isinstance(cfg, spec.config_cls), name
    assert registry.names(kind="decoder") == ["llama-tiny", "qwen2-tiny", "smollm2-135m"]
    assert set(registry.names(kind="encoder")) | set(registry.names(kind="decoder")) == set(registry.names())


def test_hf_config_lookup():
    assert registry.spec_for_hf_config({"model_type": "bert"}).model_type == "bert"
    # the HazyResearch/m2 reference writes model_type "bert" plus the Monarch flag
    ref = {"model_type": "bert", "monarch_mixer_sequence_mixing": True}
    assert registry.spec_for_hf_config(ref).model_type == "m2_bert"
    with pytest.raises(ValueError, match=r"/m/config.json has model_type='roberta'; jaxbert converts \['bert', "
                                         r"'distilbert', 'llama', 'm2_bert', 'modernbert', 'qwen2'\]"):
        registry.spec_for_hf_config({"model_type": "roberta"}, "/m")


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(KeyError, match=r"unknown model_type 'modernbrt'; did you mean \['modernbert'\]\?.*"
                                       r"Registered: \['bert', 'distilbert'"):
        registry.spec("modernbrt")
    with pytest.raises(KeyError, match=r"unknown model preset 'bert-tinny'; did you mean \['bert-tiny'"):
        registry.get("bert-tinny")
    with pytest.raises(ValueError, match="kind='vision'"):
        registry.names(kind="vision")


def test_spec_without_hf_format_says_so(tmp_path):
    cfg, _ = registry.get("mosaicbert-tiny")
    spec = registry.spec_of(cfg)
    assert spec.model_type == "jaxbert-encoder" and not spec.has_hf_format
    with pytest.raises(ValueError, match=r"model_type='jaxbert-encoder' has no Hugging Face format.*keys"):
        save_pretrained(tmp_path / "x", {}, cfg)


def test_incomplete_spec_names_what_is_missing():
    with pytest.raises(ValueError, match=r"needs \['from_hf_dict', 'keys', 'to_hf_dict'\]; missing \['keys'"):
        ArchitectureSpec("x", "encoder", BertConfig, BertModel, from_hf_dict=BertConfig.from_hf_dict,
                         to_hf_dict=BertConfig.to_hf_dict)
    with pytest.raises(ValueError, match="kind='seq2seq'"):
        ArchitectureSpec("x", "seq2seq", EncoderConfig, Encoder)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.spec("bert"))
    with pytest.raises(ValueError, match="exporting task 'question_answering' is not supported for "
                                         "model_type='modernbert'"):
        registry.spec("modernbert").hf_architecture("question_answering")


def test_one_mismatch_error_type(tmp_path):
    from jaxbert.train import checkpoint

    assert checkpoint.CheckpointMismatchError is CheckpointMismatchError
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8, "num_attention_heads": 2,
                                                      "num_hidden_layers": 1, "intermediate_size": 16}))
    from safetensors.numpy import save_file
    import numpy as np
    save_file({"bert.ghost.weight": np.zeros(2, np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="bert.ghost.weight"):
        load_pretrained(tmp_path)
