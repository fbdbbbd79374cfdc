"""Negatives gathered across the data axis: 8 simulated devices give the single-device loss.

Runs ``tests/scripts/contrastive_sharded.py`` in a subprocess (the 8-device XLA flag must be
set before jax is imported) and checks, for meshes ``data=8`` and ``data=2 x fsdp=4``, that the
``shard_map`` all-gather MNRL, the MNRL jitted over sharded global arrays and a GradCache step
over a sharded batch all equal the single-device computation on the same 32-row global batch;
and that the contrastive task trained by the Trainer gives the single-device per-step losses on
8 devices with either gathering mode.
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
def result() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mesh", ["data8", "data2_fsdp4"])
def test_gathered_loss_equals_single_device(result, mesh):
    single, got = result["single"], result[mesh]
    print(mesh, got)
    assert abs(got["gathered_loss"] - single["loss"]) < 1e-5
    assert abs(got["gathered_plain_loss"] - single["plain_loss"]) < 1e-5
    assert abs(got["context_mesh_loss"] - single["plain_loss"]) < 1e-5
    assert abs(got["global_jit_loss"] - single["loss"]) < 1e-5
    assert got["grad_diff"] < 1e-6
    assert got["gradcache_grad_diff"] < 1e-5  # float32 summation order (measured ~5e-6)


def test_gathered_loss_bad_mesh_axis():
    import jax.numpy as jnp
    from jaxbert.objectives.contrastive import gathered_mnrl_loss
    from jaxbert.train.mesh import make_mesh
    mesh = make_mesh((("data", 1),))
    with pytest.raises(ValueError, match=r"mesh axes \['model'\] not in mesh"):
        gathered_mnrl_loss(jnp.zeros((2, 4)), jnp.zeros((2, 4)), mesh=mesh, axis_names="model")
