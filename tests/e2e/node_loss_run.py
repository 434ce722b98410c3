"""Run by test_ray_node_loss.py in a process of its own (a second Ray cluster cannot join the test session's):
a 2-node loopback cluster, a DAPO run whose training ranks live on node 2, node 2 removed in the middle of
step 3, then a resume on a replacement node. Prints one JSON line with what happened."""

import json
import os
import sys
import time
from pathlib import Path

from dapo.cluster import LOCAL_CLUSTER_ENV

for key, value in LOCAL_CLUSTER_ENV.items():
    os.environ.setdefault(key, value)

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from dapo.checkpoint import CheckpointManager  # noqa: E402
from dapo.cluster import ClusterError  # noqa: E402
from dapo.config import load_config  # noqa: E402
from dapo.trainer import Trainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from e2e_settings import _overrides  # noqa: E402


def main(base: str, out: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})  # the driver's node
    node_2 = cluster.add_node(num_cpus=2)  # PACK places both 1-CPU ranks here
    settings = {
        "trainer.total_steps": 3, "trainer.save_freq": 1, "trainer.resume": "auto", "trainer.backend": "ray",
        "ray.train_workers": 2, "ray.address": cluster.address,
    }  # fmt: skip
    overrides = _overrides(Path(base), Path(out), "node-loss", **settings)
    trainer = Trainer(load_config("cpu_dapo", None, overrides), log_to_console=False)
    removed_at = {}
    train_step = trainer.train_step

    def step_losing_node_2(step: int):
        # At the start of step 3, after the step-2 checkpoint: deterministic, whatever the machine's speed (a
        # timer after the checkpoint could fire after a fast run had already finished).
        if step == 3:
            removed_at["t"] = time.monotonic()
            cluster.remove_node(node_2, allow_graceful=False)
        return train_step(step)

    trainer.train_step = step_losing_node_2
    result = {"ranks_on_node_2": all(node == node_2.node_id for node in trainer.policy.group.nodes)}
    try:
        trainer.train()
        result["error"] = None
    except ClusterError as e:
        result["error"] = str(e)
        result["error_after_s"] = time.monotonic() - removed_at["t"]
    finally:
        trainer.close()
    checkpoints = CheckpointManager(trainer.run_dir / "checkpoints")
    result["latest_checkpoint"] = checkpoints.latest_step()
    checkpoints.verify(result["latest_checkpoint"])
    cluster.add_node(num_cpus=2)  # the replacement
    resumed = Trainer(load_config("cpu_dapo", None, overrides), log_to_console=False)
    try:
        resumed.train()
    finally:
        resumed.close()
    rows = [json.loads(line) for line in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    result["steps_logged"] = [r["step"] for r in rows]
    print(json.dumps(result), flush=True)
    ray.shutdown()  # the driver first: Cluster.shutdown refuses to remove the node a driver is connected to
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
