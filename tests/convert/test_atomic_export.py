"""Exports are atomic: weights, config and tokenizer appear together or not at all, and the previous
export survives every failure (a kill between the two renames, a failing tokenizer, a full disk).

Tiny random BERT (2 layers, width 32, params from ``jax.eval_shape``: nothing compiles) and a
64-token trained tokenizer; one subprocess for the kill.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
import flax.linen as nn
from flax import traverse_util

from jaxbert.convert import atomic_dir
from jaxbert.convert.hf import load_pretrained, save_pretrained
from jaxbert.convert.sentence_transformers import save_sentence_transformer
from jaxbert.data.tokenization import load_tokenizer, train_tokenizer
from jaxbert.models.bert.model import BertConfig, BertModel
from jaxbert.tasks.base import Task

REPO = Path(__file__).resolve().parents[2]
TINY = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)


def random_params(config: BertConfig, seed: int) -> dict:
    model = BertModel(config)
    shapes = nn.unbox(jax.eval_shape(lambda r: model.init(r, np.zeros((1, 8), np.int32)), jax.random.key(0)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(np.float32), shapes["params"])


def flat(params) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def assert_same_params(a, b):
    fa, fb = flat(a), flat(b)
    assert sorted(fa) == sorted(fb)
    assert all(np.array_equal(fa[k], fb[k]) for k in fa)


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (relative name -> bytes)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def leftovers(path: Path) -> list[str]:
    """Temporary or parked siblings of ``path`` (there should be none after any write)."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = ["the cat sat on the mat", "a dog ran in the park", "stock markets fell on monday"] * 4
    return load_tokenizer(train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tok", vocab_size=64,
                                          multiple_of=64, min_frequency=1))


@pytest.fixture(scope="module")
def config():
    return BertConfig(**TINY)


@pytest.fixture(scope="module")
def old_and_new(config):
    return random_params(config, 1), random_params(config, 2)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


class FailingTokenizer:
    """Writes part of a tokenizer, then fails (a kill, a bug, a full disk while saving it)."""

    def save_pretrained(self, directory: str):
        Path(directory, "tokenizer_config.json").write_text("{")
        raise RuntimeError("tokenizer save failed half-way")


class ExportTask(Task):
    """The smallest task whose export is the base Task.write_export (HF base model + tokenizer)."""

    name = "export_probe"
    hf_task = "base"

    def __init__(self, config, tokenizer):
        self.model_config, self.tokenizer = config, tokenizer


# ----------------------------------------------------------------------------- permissions


def _modes(root: Path) -> tuple[set[int], set[int]]:
    dirs = {stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")] if p.is_dir()}
    files = {stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}
    return dirs, files


def test_permissions_like_transformers(config, old_and_new, tokenizer, tmp_path, umask_022):
    out = save_pretrained(tmp_path / "export", old_and_new[0], config, tokenizer=tokenizer)
    assert _modes(out) == ({0o755}, {0o644})
    # transformers' own save (os.makedirs + open) gives the same under the same umask
    tokenizer.save_pretrained(str(tmp_path / "by_transformers"))
    assert _modes(tmp_path / "by_transformers") == ({0o755}, {0o644})
    st = save_sentence_transformer(tmp_path / "st", old_and_new[0], config, tokenizer, max_seq_length=64)
    assert (st / "1_Pooling").is_dir() and _modes(st) == ({0o755}, {0o644})
    os.umask(0o027)  # a stricter umask is respected, as transformers does
    out = save_pretrained(tmp_path / "private", old_and_new[0], config, tokenizer=tokenizer)
    assert _modes(out) == ({0o750}, {0o640})


# ----------------------------------------------------------------------------- the swap


def test_replace_is_one_exchange_on_linux(config, old_and_new, tmp_path, monkeypatch):
    path = save_pretrained(tmp_path / "export", old_and_new[0], config)
    if atomic_dir._renameat2() is None:
        pytest.skip("no renameat2 in this libc")
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append((a, b)), real_replace(a, b)))
    save_pretrained(path, old_and_new[1], config)
    assert renames == [], "the exchange path must not rename the old directory aside"
    assert_same_params(load_pretrained(path).params, old_and_new[1])
    assert leftovers(path) == []


def test_second_rename_failing_puts_the_old_export_back(config, old_and_new, tmp_path, monkeypatch):
    path = save_pretrained(tmp_path / "export", old_and_new[0], config)
    before = snapshot(path)
    monkeypatch.setattr(atomic_dir, "_exchange", lambda a, b: False)  # the two-rename fallback
    real_replace, calls = os.replace, []

    def replace(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise OSError(errno.EIO, "simulated failure of the second rename")
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="second rename"):
        save_pretrained(path, old_and_new[1], config)
    assert snapshot(path) == before and leftovers(path) == []
    monkeypatch.setattr(os, "replace", real_replace)
    save_pretrained(path, old_and_new[1], config)  # the fallback path, uninterrupted
    assert_same_params(load_pretrained(path).params, old_and_new[1])
    assert leftovers(path) == []


KILL_BETWEEN_RENAMES = textwrap.dedent("""
    import os, sys
    import numpy as np
    from jaxbert.convert import atomic_dir
    atomic_dir._exchange = lambda a, b: False      # a system without RENAME_EXCHANGE
    real, calls = os.replace, []
    def replace(a, b):
        calls.append(a)
        if len(calls) == 2:
            os._exit(137)                          # killed right after the old export was moved aside
        real(a, b)
    os.replace = replace
    atomic_dir.write_weights_dir(sys.argv[1], {"w": np.ones(3, np.float32)}, {"new": True})
""")


def test_kill_between_the_two_renames_is_recovered(config, old_and_new, tmp_path):
    path = save_pretrained(tmp_path / "export", old_and_new[0], config)
    before = snapshot(path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(path)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 137, proc.stderr
    assert not path.exists() and atomic_dir.old_path(path).is_dir()  # the window the exchange closes
    # The next reader puts the old export back (complete: every file, the same bytes).
    assert_same_params(load_pretrained(path).params, old_and_new[0])
    assert snapshot(path) == before
    stale = leftovers(path)
    assert len(stale) == 1 and stale[0].startswith(".export.tmp-")  # the dead writer's new copy
    # Same crash, then the next export into the path: recovered first, then replaced; the dead
    # writer's temporary directory is removed.
    os.rename(path, atomic_dir.old_path(path))
    save_pretrained(path, old_and_new[1], config)
    assert_same_params(load_pretrained(path).params, old_and_new[1])
    assert leftovers(path) == []


# ----------------------------------------------------------------------------- failures while writing


def test_failing_tokenizer_keeps_the_previous_export(config, old_and_new, tokenizer, tmp_path):
    path = ExportTask(config, tokenizer).write_export(old_and_new[0], tmp_path / "export")
    assert (path / "tokenizer.json").is_file() and (path / "model.safetensors").is_file()
    before = snapshot(path)
    with pytest.raises(RuntimeError, match="half-way"):
        ExportTask(config, FailingTokenizer()).write_export(old_and_new[1], path)
    assert snapshot(path) == before and leftovers(path) == []
    st = save_sentence_transformer(tmp_path / "st", old_and_new[0], config, tokenizer, max_seq_length=64)
    st_before = snapshot(st)
    with pytest.raises(RuntimeError, match="half-way"):
        save_sentence_transformer(st, old_and_new[1], config, FailingTokenizer(), max_seq_length=64)
    assert snapshot(st) == st_before and leftovers(st) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and mount permission; skipped otherwise)."""
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True,
                              text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs: {e}")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False, timeout=30)


def test_disk_full_keeps_the_previous_export(config, old_and_new, tokenizer, small_disk):
    path = save_pretrained(small_disk / "export", old_and_new[0], config, tokenizer=tokenizer)  # ~0.2 MB
    before = snapshot(path)
    big = config.replace(vocab_size=8192)  # an 8192 x 32 embedding alone is 1 MiB
    with pytest.raises(OSError) as err:
        save_pretrained(path, random_params(big, 3), big, tokenizer=tokenizer)
    assert err.value.errno == errno.ENOSPC
    msg = str(err.value)
    print(f"\ndisk full: {msg}")
    assert f"no space left on device while writing {path}" in msg and "is unchanged" in msg
    assert snapshot(path) == before and leftovers(path) == []
    assert_same_params(load_pretrained(path).params, old_and_new[0])
