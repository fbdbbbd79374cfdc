"""Write a weights directory (one safetensors file + one JSON config) atomically.

Used by every exporter (HF encoders, Llama-family decoders, PEFT adapters): the files are
written into a temporary sibling directory, which then replaces ``path`` with ``os.replace``;
an existing ``path`` is moved aside first and removed only after the swap, so a crash at any
point leaves either the old directory or the new one, never a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np


def write_weights_dir(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], config: Mapping[str, Any],
                      weights_name: str = "model.safetensors", config_name: str = "config.json",
                      fmt: str = "pt", extra_files: Callable[[Path], Any] | None = None) -> Path:
    """Atomically (re)create ``path`` holding ``weights_name`` (safetensors) and ``config_name`` (JSON).

    ``extra_files(tmp_dir)``, when given, writes further files (a tokenizer, ...) into the
    temporary directory before the swap, so they appear together with the weights or not at all.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        save_file(dict(tensors), str(tmp / weights_name), metadata={"format": fmt})
        (tmp / config_name).write_text(json.dumps(config, indent=2, sort_keys=True))
        if extra_files is not None:
            extra_files(tmp)
        swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def swap_into_place(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the finished directory ``tmp`` to ``path``, replacing an existing ``path``.

    The old directory is renamed aside first and deleted only after the new one is in place, so
    at every moment ``path`` is either the complete old export or the complete new one.
    """
    tmp, path = Path(tmp), Path(path)
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
