"""A node lost in the middle of a step, on a simulated 2-node loopback cluster (`ray.cluster_utils.Cluster`):
one ClusterError within seconds, the last checkpoint intact, and a resume that completes the run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_a_lost_node_is_one_error_within_seconds_and_the_run_resumes(base_model_dir, tmp_path):
    pytest.importorskip("ray")
    script = Path(__file__).with_name("node_loss_run.py")
    done = subprocess.run(
        [sys.executable, str(script), str(base_model_dir), str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads([line for line in done.stdout.splitlines() if line.startswith('{"ranks_on_node_2"')][-1])
    assert result["ranks_on_node_2"]
    assert result["error"] is not None, "the run finished although its ranks' node was removed"
    assert "died during" in result["error"] and "trainer.resume=auto" in result["error"]
    assert result["error_after_s"] < 20  # not a hang (measured: see docs/distributed.md)
    assert result["latest_checkpoint"] == 2
    assert result["steps_logged"] == [1, 2, 3]
