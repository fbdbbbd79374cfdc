"""One process of a (multi-process) training run of the tiny config; prints JSON on its last line.

Used by ``tests/train/test_multiprocess.py``. Multi-process on localhost (one per process)::

    python tests/scripts/multiprocess_worker.py --train T --test T --workdir D \
        --coordinator 127.0.0.1:PORT --num_processes 2 --process_id I

Without ``--coordinator`` it is the single-process reference. Either way it runs the real loop
(``Trainer.run()``: host-sharded data, ``shard_batch``, the jitted step, the final evaluation
and the orbax checkpoint save that every process takes part in) for 3 steps, recording each
step's global loss as *this* process sees it, the rows of its host-local batches, the final
parameters' checksum and the evaluation result.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", ".."), HERE]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--coordinator", default=None)
    ap.add_argument("--num_processes", type=int, default=1)
    ap.add_argument("--process_id", type=int, default=0)
    args = ap.parse_args()

    import json

    import jax
    import numpy as np

    if args.coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes,
                                   process_id=args.process_id, initialization_timeout=120)
    from jaxbert.train.loop import Trainer
    from tiny_config import make_config

    cfg = make_config(args.train, args.test)
    cfg.checkpoint.best_metric = "test/accuracy"
    trainer = Trainer(cfg, args.workdir)

    losses, local_rows, first_labels = [], [], []
    step_fn = trainer.train_step

    def recording_step(state, gbatch):  # the loop calls self.train_step(state, sharded batch)
        local = [np.asarray(s.data) for s in gbatch["labels"].addressable_shards]
        local_rows.append(int(sum(x.shape[0] for x in local)))
        first_labels.append(np.concatenate(local).tolist())
        state, m = step_fn(state, gbatch)
        m_host = jax.device_get(m)  # replicated: every process can read the global sums
        losses.append(float(m_host["loss"]) / max(float(m_host["weight"]), 1.0))
        return state, m

    trainer.train_step = recording_step
    result = trainer.run()
    params = trainer.final_state.params
    # Replicated params (data-parallel mesh): each process holds a full copy in its local shard.
    abs_sum = float(sum(np.abs(np.asarray(x.addressable_shards[0].data, np.float64)).sum()
                        for x in jax.tree.leaves(params)))
    print(json.dumps({
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "global_devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "status": result["status"],
        "step": result["step"],
        "losses": losses,
        "local_rows": local_rows,
        "local_labels": first_labels,
        "param_abs_sum": abs_sum,
        "eval": result["eval"],
    }), flush=True)
    if args.coordinator:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
