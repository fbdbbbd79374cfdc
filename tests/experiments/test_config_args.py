"""``experiments.configs.args.parse_arg``: the one parser of every config file's ``:ARG``."""

from __future__ import annotations

import importlib

import pytest

from experiments.configs.args import parse_arg

ARGS = {"dataset": "trec", "runlocal": False, "tiny": False, "steps": 8, "lr": 1e-3, "init": None}


def test_positional_flags_and_key_values_are_the_same_argument():
    a = parse_arg("sms_spam,tiny,runlocal", ARGS, positional=("dataset",))
    b = parse_arg("dataset=sms_spam,tiny=True,runlocal", ARGS, positional=("dataset",))
    c = parse_arg("tiny,sms_spam,runlocal=1", ARGS, positional=("dataset",))
    assert a.to_dict() == b.to_dict() == c.to_dict()
    assert a.to_dict() == {"dataset": "sms_spam", "runlocal": True, "tiny": True, "steps": 8, "lr": 1e-3, "init": None}


def test_defaults_and_types():
    assert parse_arg(None, ARGS).to_dict() == ARGS
    assert parse_arg("", ARGS).to_dict() == ARGS
    a = parse_arg("steps=12,lr=3e-5,init=/x/export,tiny=False", ARGS)
    assert (a.steps, a.lr, a.init, a.tiny) == (12, 3e-5, "/x/export", False)
    assert isinstance(a.steps, int) and isinstance(a.lr, float)


@pytest.mark.parametrize("arg, message", [
    ("trec,fast", r"unknown config flags \['fast'\]; known: dataset \(trec\|sms_spam\), runlocal, tiny, "
                  r"steps=\.\.\., lr=\.\.\., init=\.\.\."),
    ("imdb", r"unknown dataset 'imdb'; known: \['trec', 'sms_spam'\]"),
    ("nsteps=3", r"unknown config argument 'nsteps'"),
    ("steps=three", r"steps='three': expected int"),
    ("tiny=maybe", r"tiny='maybe': expected True or False"),
    ("init=a,init=b", r"init= given twice \('a', 'b'\)"),
    ("trec,dataset=sms_spam", r"dataset= given twice"),
    ("init=", r"init= needs a value"),
])
def test_errors_name_the_problem_and_the_known_arguments(arg, message):
    with pytest.raises(ValueError, match=message):
        parse_arg(arg, ARGS, positional=("dataset",), choices={"dataset": ("trec", "sms_spam")})


def test_two_positionals_fill_in_order():
    spec = {"size": "mini", "masking": "random", "runlocal": False}
    assert parse_arg("tiny", spec, positional=("size", "masking")).to_dict() == {
        "size": "tiny", "masking": "random", "runlocal": False}
    assert parse_arg("runlocal,tiny,span", spec, positional=("size", "masking")).to_dict() == {
        "size": "tiny", "masking": "span", "runlocal": True}
    assert parse_arg("masking=span,tiny", spec, positional=("size", "masking")).size == "tiny"


@pytest.mark.parametrize("module, arg, key, value", [
    ("finetune_classification", "trec,tiny,runlocal", "num_train_steps", 8),
    ("finetune_classification", "dataset=trec,runlocal", "data.labels", ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")),
    ("pretrain_mlm", "tiny,span,runlocal", "mlm.masking", "span"),
    ("m2_pretrain", "tiny,runlocal", "mlm.packing", False),
    ("peft", "hft,trec,tiny,runlocal", "peft.method", "hft"),
    ("finetune_qa", "/a/train.json,/a/dev.json,runlocal", "data.validation", "/a/dev.json"),
])
def test_config_files_parse_through_it(module, arg, key, value, data_dir):
    c = importlib.import_module(f"experiments.configs.{module}").get_config(arg)
    for part in key.split("."):
        c = c[part]
    assert (tuple(c) if isinstance(c, (list, tuple)) else c) == value


def test_no_config_file_parses_its_argument_by_hand():
    """Every config with a ``get_config`` goes through ``parse_arg`` (no ``arg.split(",")`` copies)."""
    from pathlib import Path
    folder = Path(__file__).resolve().parents[2] / "experiments" / "configs"
    for path in sorted(folder.glob("*.py")):
        text = path.read_text()
        if "\ndef get_config(" in text:
            assert "parse_arg(arg" in text, f"{path.name}: get_config does not call parse_arg"
            assert '.split(",")' not in text, f"{path.name}: parses its argument by hand"


def test_every_docstring_command_builds_its_config(data_dir):
    """The ``--config experiments/configs/X.py:ARG`` of every config docstring parses and builds."""
    import ast
    import re
    from pathlib import Path
    folder = Path(__file__).resolve().parents[2] / "experiments" / "configs"
    seen = 0
    for path in sorted(folder.glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        for name, arg in re.findall(r"--config[ =]experiments/configs/(\w+)\.py(?::(\S*))?", doc):
            if name != path.stem:  # a command of another config file
                continue
            module = importlib.import_module(f"experiments.configs.{name}")
            c = module.get_config(arg) if arg else module.get_config()
            assert c.task, (name, arg)
            seen += 1
    assert seen >= 20
