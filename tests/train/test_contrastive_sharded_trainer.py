"""The contrastive task trained by the Trainer on 8 simulated devices gives the single-device
per-step losses, with negatives gathered by jit over the global batch or by shard_map.

Runs ``tests/scripts/contrastive_sharded.py --trainer`` in a subprocess (tiny BERT, MNRL, dropout
off, 2 steps of 16 real wordnet_defs pairs; meshes: 1 device, ``data=8`` global, ``data=8``
shard_map).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "tests" / "scripts" / "contrastive_sharded.py"


@pytest.fixture(scope="module")
def result(data_dir, minilm_dir) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXBERT_DATA=str(data_dir))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--trainer"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["trainer"]


@pytest.mark.parametrize("run", ["data8_global", "data8_shard_map"])
def test_trainer_losses_equal_single_device(result, run):
    ref, got = result["single"], result[run]
    print(run, got, "vs", ref)
    assert len(got) == len(ref) == 2
    assert max(abs(a - b) for a, b in zip(got, ref)) < 1e-5
