"""Records are checked before step 1, and the readers name the line / the kind of path at fault.

A ``{"text": null}`` record in an eval split used to pass startup and stop the run at the final
evaluation, after all training; a non-UTF-8 byte was reported at a position inside a read buffer;
a directory given as ``data.train`` said "not found".
"""

from __future__ import annotations

import gzip
import json

import ml_collections
import pytest

from conftest import read_jsonl
from jaxbert.data.features.text import check_records
from jaxbert.data.labels import LabelMap
from jaxbert.data.sources import JsonlSource, read_jsonl_lines


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------- per-record checks
@pytest.mark.parametrize("record, pair_field, fragment", [
    ({"text": None, "label": "a"}, None, "field 'text' must be str, got NoneType"),
    ({"label": "a"}, None, "no text field 'text'"),
    ({"text": "x", "pair": 3, "label": "a"}, "pair", "field 'pair' must be str, got int"),
    ({"text": "x", "label": "a"}, "pair", "no text field 'pair'"),
    ({"text": "x"}, None, "no label field 'label'"),
    ({"text": "x", "label": "z"}, None, "label 'z' (str) in field 'label' is not one of the 2 valid labels"),
])
def test_bad_record_names_file_and_line(tmp_path, record, pair_field, fragment):
    good = {"text": "fine", "pair": "also fine", "label": "b"}
    path = _write(tmp_path / "split.jsonl", [good, good, record])  # line 3
    with pytest.raises((TypeError, ValueError)) as e:
        check_records(JsonlSource(path), text_field="text", pair_field=pair_field,
                      label_map=LabelMap("label", ["a", "b"]))
    msg = str(e.value)
    assert f"{path} line 3 (record 2)" in msg and fragment in msg, msg


def test_null_text_in_validation_stops_the_trainer_at_startup(tmp_path, data_dir):
    """The issue's case: the run is refused while the Trainer is built, before step 1."""
    from experiments.configs.finetune_classification import get_config
    from jaxbert.train.loop import Trainer
    rows = read_jsonl(data_dir / "rotten_tomatoes" / "validation.jsonl", 6)
    rows[4]["text"] = None  # line 5
    val = _write(tmp_path / "validation.jsonl", rows)
    c = get_config("rotten_tomatoes,tiny,runlocal")
    c.data.train = str(_write(tmp_path / "train.jsonl", read_jsonl(data_dir / "rotten_tomatoes" / "train.jsonl", 16)))
    c.data.validation = str(val)
    c.data.test = str(val)
    c.export_hf = c.tensorboard = c.progress = False
    workdir = tmp_path / "run"
    with pytest.raises(TypeError) as e:
        Trainer(c, workdir)
    assert f"{val} line 5 (record 4): field 'text' must be str, got NoneType" in str(e.value), str(e.value)
    assert not (workdir / "checkpoints").exists()


def test_eval_set_texts_are_checked_naming_the_document():
    from jaxbert.eval.retrieval import RetrievalSet
    from jaxbert.tasks.base import Task
    task = Task()
    task.eval_sources = {"beir": RetrievalSet(["q1"], ["a query"], ["d1", "d2"], ["doc one", None], {"q1": {"d1": 1}})}
    with pytest.raises(TypeError, match=r"eval set 'beir': document 'd2' must be a str, got NoneType"):
        task.check_records()
    task.eval_sources["beir"].docs[1] = "doc two"
    task.check_records()


def test_pairs_eval_set_and_mlm_held_out_file_check_their_texts(tmp_path):
    from experiments.configs.common import base_config
    from jaxbert.tasks.contrastive import load_eval_set
    from jaxbert.tasks.mlm import load_documents
    sts = _write(tmp_path / "sts.jsonl", [{"anchor": "a", "positive": "b", "score": 1.0},
                                          {"anchor": "a", "positive": None, "score": 0.0}])
    with pytest.raises(TypeError, match=rf"{sts} line 2 \(record 1\): field 'positive' must be a str, got NoneType"):
        load_eval_set("sts", ml_collections.ConfigDict({"kind": "pairs", "path": str(sts)}))
    c = base_config("mlm")
    c.data.train = str(_write(tmp_path / "docs.jsonl", [{"text": "one document"}]))
    c.data.validation = str(_write(tmp_path / "held.jsonl", [{"text": "ok"}, {"text": 7}]))
    with pytest.raises(ValueError, match=r"held.jsonl line 2 \(record 1\): no str field 'text'"):
        load_documents(c)


# ---------------------------------------------------------------------------- readers
@pytest.mark.parametrize("gz", [False, True])
def test_non_utf8_byte_is_reported_by_line_and_column(tmp_path, gz):
    # the bad byte sits far past the decoder's first read buffer, on line 3001
    lines = [json.dumps({"text": f"line {i} " + "x" * 60}).encode() for i in range(1, 3001)]
    lines.append(b'{"text": "caf\xe9"}')  # latin-1 e-acute
    lines.append(json.dumps({"text": "after"}).encode())
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / ("bad.jsonl.gz" if gz else "bad.jsonl")
    path.write_bytes(gzip.compress(data) if gz else data)
    for read in (JsonlSource, read_jsonl_lines):
        with pytest.raises(ValueError) as e:
            read(path)
        assert str(e.value).startswith(f"{path} line 3001: byte b'\\xe9' at column 14 is not UTF-8"), str(e.value)


def test_crlf_and_blank_lines_keep_line_numbers(tmp_path):
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b'{"text": "a"}\r\n\r\n{"text": "b"}\r\n{"text": "\xff"}\r\n')
    with pytest.raises(ValueError, match=r"line 4: byte b'\\xff' at column 11"):
        JsonlSource(path)
    path.write_bytes(b'{"text": "a"}\r\n\r\n{"text": "b"}\r\n')
    assert JsonlSource(path).describe(1).endswith("line 3 (record 1)")


def test_directory_gets_its_own_message(tmp_path, data_dir):
    folder = tmp_path / "trec"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=rf"^data.train='{folder}' is a directory; expected a .jsonl file$"):
        JsonlSource(folder, key="data.train")
    with pytest.raises(IsADirectoryError, match=rf"^{folder} is a directory"):
        read_jsonl_lines(folder)
    with pytest.raises(FileNotFoundError, match=rf"JSONL file not found: data.train='{folder / 'x.jsonl'}'"):
        JsonlSource(folder / "x.jsonl", key="data.train")
    from experiments.configs.finetune_classification import get_config
    from jaxbert.tasks import get_task
    c = get_config("trec,tiny,runlocal")
    c.data.train = str(folder)
    with pytest.raises(IsADirectoryError, match=rf"data.train='{folder}' is a directory"):
        get_task("classification")(c)


def test_real_records_pass_the_check(data_dir):
    """No false alarm on the shipped data (every split of rotten_tomatoes and trec)."""
    for name, field in (("rotten_tomatoes", "label"), ("trec", "coarse_label")):
        train = JsonlSource(data_dir / name / "train.jsonl")
        labels = LabelMap.infer(train, field)
        for path in sorted((data_dir / name).glob("*.jsonl")):
            check_records(JsonlSource(path), label_map=labels)
