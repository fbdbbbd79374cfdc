"""Resume records what changed (jaxbert/train/run_config.py).

Unit tests of the check on the real ``tiny,runlocal`` config dict with a stand-in finalized
checkpoint directory (no training): a changed learning rate, total steps, dropout, seed or a
training file swapped for another with the same record count is refused with the key named and
nothing written; ``allow_config_change`` records one ``config_change`` row; ``log_every`` may change.
Then one real interrupted run through ``Trainer``: the refused resume leaves ``metrics.jsonl`` and
``checkpoints/`` as they were, the allowed one finishes with one history and the change row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import read_jsonl
from jaxbert.train import run_config as rc
from jaxbert.train.checkpoint import CHECKPOINTS_SUBDIR, STEP_MARKER


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, data_dir):
    """Small trec train / test files and a train file of the same record count, other records."""
    root = tmp_path_factory.mktemp("data")
    train, other, test = read_jsonl(data_dir / "trec" / "train.jsonl", 64), None, None
    other = read_jsonl(data_dir / "trec" / "train.jsonl", 128)[64:]
    test = read_jsonl(data_dir / "trec" / "test.jsonl", 16)
    for name, rows in (("train.jsonl", train), ("other_train.jsonl", other), ("test.jsonl", test)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _config(small_data: Path, **changes):
    from experiments.configs.finetune_classification import get_config
    c = get_config("trec,tiny,runlocal")
    c.data.train, c.data.test = str(small_data / "train.jsonl"), str(small_data / "test.jsonl")
    c.export_hf = c.tensorboard = c.progress = False
    for key, value in changes.items():
        node, *path = key.split(".")
        target = c
        for part in [node, *path][:-1]:
            target = target[part]
        target[[node, *path][-1]] = value
    return c


def _as_dict(c) -> dict:
    return json.loads(c.to_json_best_effort())


def _fake_checkpoint(workdir: Path, step: int) -> None:
    d = workdir / CHECKPOINTS_SUBDIR / str(step)
    d.mkdir(parents=True)
    (d / STEP_MARKER).write_text("{}")


def _rows(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def started(tmp_path, small_data):
    """A workdir whose first segment was recorded and that holds a finalized checkpoint at step 3."""
    rc.check_and_record(tmp_path, _as_dict(_config(small_data)), say=lambda m: None)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "split": "train", "loss": 1.0}) + "\n"
                                                    for s in (1, 2, 3)))
    _fake_checkpoint(tmp_path, 3)
    return tmp_path


def test_first_segment_is_recorded_with_data_hashes(tmp_path, small_data):
    cfg = _as_dict(_config(small_data))
    assert rc.check_and_record(tmp_path, cfg) == []
    (row,) = rc.read_history(tmp_path)
    assert row["start_step"] == 0 and row["config"] == cfg
    assert json.loads((tmp_path / "config.json").read_text()) == cfg
    train = row["data_files"]["data.train"]
    assert train["sha256"] == rc.sha256_file(small_data / "train.jsonl")
    assert train["bytes"] == (small_data / "train.jsonl").stat().st_size
    assert set(row["data_files"]) == {"data.train", "data.test"}


@pytest.mark.parametrize("key,value", [
    ("optim.learning_rate", 2e-3),
    ("num_train_steps", 99),
    ("model.overrides.hidden_dropout_prob", 0.0),
    ("seed", 7),
    ("batch_size", 16),
    ("optim.schedule", "cosine"),
])
def test_resume_with_a_trajectory_change_is_refused(started, small_data, key, value):
    history, metrics = (started / rc.HISTORY_NAME).read_text(), (started / "metrics.jsonl").read_text()
    old = rc.flatten(_as_dict(_config(small_data)))[key]
    with pytest.raises(rc.ConfigChangeError, match=rf"at step 3 .*{key}: {json.dumps(old)} -> {json.dumps(value)}"
                                                   r".*allow_config_change=true"):
        rc.check_and_record(started, _as_dict(_config(small_data, **{key: value})))
    # Nothing written: the history, metrics and latest config are as they were.
    assert (started / rc.HISTORY_NAME).read_text() == history
    assert (started / "metrics.jsonl").read_text() == metrics
    assert rc.flatten(json.loads((started / "config.json").read_text()))[key] == old


def test_allowed_change_is_recorded_once_in_metrics(started, small_data):
    said = []
    new = _as_dict(_config(small_data, **{"optim.learning_rate": 2e-3, "allow_config_change": True}))
    changes = rc.check_and_record(started, new, allow_change=True, say=said.append)
    assert [(c.key, c.new, c.trajectory) for c in changes if c.key != "allow_config_change"] == \
        [("optim.learning_rate", 2e-3, True)]
    event = _rows(started)[-1]
    assert event == {"step": 3, "split": "config_change",
                     "changes": [{"key": "optim.learning_rate", "old": 1e-3, "new": 2e-3}]}
    assert len(said) == 1 and "optim.learning_rate: 0.001 -> 0.002" in said[0]
    first, second = rc.read_history(started)
    assert (first["start_step"], second["start_step"]) == (0, 3)
    assert first["config"]["optim"]["learning_rate"] == 1e-3  # the first segment's settings are kept
    assert json.loads((started / "config.json").read_text()) == new
    # Resuming again with the new settings continues the new segment: no change, no second row.
    assert [c.key for c in rc.check_and_record(started, new, allow_change=True)] == []
    assert [r["split"] for r in _rows(started)].count("config_change") == 1


def test_same_count_swapped_train_file_is_refused(started, small_data):
    train = small_data / "train.jsonl"
    saved = train.read_bytes()
    try:
        train.write_bytes((small_data / "other_train.jsonl").read_bytes())  # 64 records, other ones
        assert len(read_jsonl(train)) == 64
        with pytest.raises(rc.ConfigChangeError, match=r"data\.train \(sha256 of .+train\.jsonl\): \"[0-9a-f]{64}\""):
            rc.check_and_record(started, _as_dict(_config(small_data)))
    finally:
        train.write_bytes(saved)
    with pytest.raises(rc.ConfigChangeError, match=r"data\.train: .+train\.jsonl\" -> .+other_train\.jsonl"):
        rc.check_and_record(started, _as_dict(_config(small_data, **{"data.train": str(small_data / "other_train.jsonl")})))


def test_neutral_changes_are_allowed_and_kept_in_the_history(started, small_data):
    new = _as_dict(_config(small_data, log_every=1, eval_every=5, eval_batch_size=8,
                           **{"checkpoint.keep_last": 5, "mesh": (("data", 1), ("fsdp", 1), ("tensor", 1))}))
    changes = rc.check_and_record(started, new)
    assert {c.key for c in changes} == {"log_every", "eval_every", "eval_batch_size", "checkpoint.keep_last", "mesh"}
    assert not any(c.trajectory for c in changes)
    assert "config_change" not in [r["split"] for r in _rows(started)]
    assert {c["key"] for c in rc.read_history(started)[-1]["changes"]} == {c.key for c in changes}


def test_validation_file_content_change_is_not_a_trajectory_change(started, small_data, tmp_path_factory):
    other_test = tmp_path_factory.mktemp("t") / "test.jsonl"
    other_test.write_text((small_data / "test.jsonl").read_text().splitlines()[0] + "\n")
    changes = rc.check_and_record(started, _as_dict(_config(small_data, **{"data.test": str(other_test)})))
    assert changes and not any(c.trajectory for c in changes)


def test_resume_compares_with_the_segment_it_continues(tmp_path, small_data):
    """A fallback to an older checkpoint compares with the settings that produced it."""
    base, faster = _as_dict(_config(small_data)), _as_dict(_config(small_data, **{"optim.learning_rate": 2e-3}))
    rc.check_and_record(tmp_path, base)
    _fake_checkpoint(tmp_path, 3)
    rc.check_and_record(tmp_path, faster, allow_change=True)  # segment from step 3
    _fake_checkpoint(tmp_path, 6)
    assert rc.check_and_record(tmp_path, faster) == []  # continues the segment from 3
    (tmp_path / CHECKPOINTS_SUBDIR / "6" / STEP_MARKER).unlink()  # step 6 unfinished: resume at 3
    with pytest.raises(rc.ConfigChangeError, match="optim.learning_rate: 0.002 -> 0.001"):
        rc.check_and_record(tmp_path, base)


def test_workdir_from_before_the_history_compares_with_config_json(tmp_path, small_data):
    (tmp_path / "config.json").write_text(json.dumps(_as_dict(_config(small_data))))
    _fake_checkpoint(tmp_path, 2)
    with pytest.raises(rc.ConfigChangeError, match=r"seed: 0 -> 1 \(saved config: .+config\.json \(no content"):
        rc.check_and_record(tmp_path, _as_dict(_config(small_data, seed=1)))


def test_every_default_key_is_classified_on_purpose(small_data):
    keys = rc.flatten(_as_dict(_config(small_data)))
    neutral = sorted(k for k in keys if not rc.affects_trajectory(k))
    assert neutral == sorted(
        ["allow_config_change", "log_every", "progress", "tensorboard", "eval_every", "eval_batch_size",
         "eval_splits", "export_hf", "data.validation", "data.test", "mesh", "logical_axis_rules",
         "model.overrides.remat", "debug_sigterm_at_step"] + [k for k in keys if k.startswith("checkpoint.")])
    for k in ("optim.learning_rate", "optim.name", "optim.schedule", "num_train_steps", "num_epochs",
              "batch_size", "grad_accum_steps", "seed", "model.overrides.hidden_dropout_prob", "model.preset",
              "data.train", "data.max_length", "data.tokenizer", "peft.method", "label_smoothing"):
        assert rc.affects_trajectory(k), k


# ------------------------------------------------------------------------------------------
# Through the Trainer: an interrupted run, a refused resume, an allowed one
# ------------------------------------------------------------------------------------------

def test_trainer_resume_refused_then_allowed(tmp_path, small_data):
    from jaxbert.train.loop import Trainer
    total, stop = 4, 2
    first = Trainer(_config(small_data, num_train_steps=total, log_every=1, debug_sigterm_at_step=stop),
                    tmp_path).run()
    assert first["status"] == "preempted" and first["step"] == stop
    before = (tmp_path / "metrics.jsonl").read_text()
    ckpts = sorted(p.name for p in (tmp_path / CHECKPOINTS_SUBDIR).iterdir())

    faster = dict(num_train_steps=total, log_every=1, **{"optim.learning_rate": 3e-3})
    with pytest.raises(rc.ConfigChangeError, match=r"at step 2 .*optim\.learning_rate: 0\.001 -> 0\.003"):
        Trainer(_config(small_data, **faster), tmp_path).run()
    assert (tmp_path / "metrics.jsonl").read_text() == before  # refused before step 3
    assert sorted(p.name for p in (tmp_path / CHECKPOINTS_SUBDIR).iterdir()) == ckpts
    assert not (tmp_path / "jaxbert.lock").exists()  # released on the exception

    done = Trainer(_config(small_data, allow_config_change=True, **faster), tmp_path).run()
    assert done["status"] == "done" and done["start_step"] == stop and done["step"] == total
    rows = [r for r in _rows(tmp_path) if r["split"] != "test"]  # the final evaluation's rows aside
    assert [(r["step"], r["split"]) for r in rows] == \
        [(1, "train"), (2, "train"), (2, "config_change"), (3, "train"), (4, "train")]
    assert rows[2]["changes"] == [{"key": "optim.learning_rate", "old": 1e-3, "new": 3e-3}]
    assert [r["learning_rate"] > 0 for r in rows if r["split"] == "train"] == [True] * 4
    assert [h["start_step"] for h in rc.read_history(tmp_path)] == [0, stop]
