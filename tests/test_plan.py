"""`dapo train --dry-run`: exact parameter counts without weights, the memory terms by hand, and the recipes
planned in seconds (the paper's run does not fit yet, and says why)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dapo.cli import main
from dapo.config import load_config
from dapo.models import build_char_tokenizer, build_tiny_model, num_parameters
from dapo.plan import DryRunError, count_parameters, make_plan, model_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize(
    "path, params",
    [  # the counts their makers publish
        ("Qwen/Qwen2.5-0.5B-Instruct", 494_032_768),
        ("Qwen/Qwen2.5-1.5B", 1_543_714_304),
        ("Qwen/Qwen2.5-7B", 7_615_616_512),
        ("Qwen/Qwen2.5-32B", 32_763_876_352),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", 134_515_008),
    ],
)
def test_parameters_are_counted_exactly_on_the_meta_device(path, params):
    assert count_parameters(model_config(load_config("dapo", None, [f"model.path={path}"]))) == params


def test_the_builtin_and_a_local_directory_are_read_from_their_configs(tmp_path):
    tiny = build_tiny_model(build_char_tokenizer(), "5m")
    assert count_parameters(model_config(load_config("cpu_dapo", None, ["model.path=builtin:tiny-5m"]))) == (
        num_parameters(tiny)
    )
    tiny.save_pretrained(tmp_path / "m")
    config = load_config("cpu_dapo", None, [f"model.path={tmp_path / 'm'}"])
    assert count_parameters(model_config(config)) == num_parameters(tiny)
    with pytest.raises(DryRunError, match=r"known ids: Qwen/Qwen2\.5-0\.5B"):
        model_config(load_config("cpu_dapo", None, ["model.path=someone/unknown-model"]))


def test_the_memory_terms_by_hand():
    """Qwen2.5-0.5B (P = 494,032,768; 24 layers, hidden 896, MLP 4864, vocab 151,936), float32, one GPU:
    weights 4P (+2P bf16 copies) = 2.964 GB, gradients 4P = 1.976 GB, AdamW 8P = 3.952 GB, activations
    4096 · 24 · (12 · 896 + 4.3 · 4864) · 2 = 6.226 GB, head 4096 · 896 · 4 + 3 · 1024 · 151,936 · 4 = 1.882 GB;
    total 17.000 GB. Checkpointed: 4096 · (24 + 3) · 896 · 2 + 4096 · (12 · 896 + 4.3 · 4864) · 2 = 0.457 GB;
    total 11.231 GB."""
    text = make_plan(load_config("dapo", RECIPES / "dapo-qwen2.5-0.5b-gsm8k.yaml")).text()
    assert "weights 3.0 GB | gradients 2.0 GB | AdamW moments 4.0 GB | activations (4,096 tokens" in text
    assert "a micro-batch) 6.2 GB | log-prob head 1.9 GB = 17.0 GB" in text
    overrides = ["actor.activation_checkpointing=true"]
    text = make_plan(load_config("dapo", RECIPES / "dapo-qwen2.5-0.5b-gsm8k.yaml", overrides)).text()
    assert "activations, checkpointed (4,096 tokens a micro-batch) 0.5 GB | log-prob head 1.9 GB = 11.2 GB" in text
    # KV cache: 2 · 24 layers · 2 KV heads · 64 · 2 bytes = 12,288 bytes a token
    assert "KV cache 12 kB a token" in text and "fits: yes" in text


def test_fsdp2_terms_by_hand_one_unit_a_block():
    """Qwen2.5-Math-7B on 8 FSDP2 ranks, bf16-mixed: a block holds q, k, v (with biases), o, the MLP and two norms,
    3584² + 3584 + 2 · (3584 · 512 + 512) + 3584² + 3 · 3584 · 18,944 + 2 · 3584 = 233,057,792 parameters; the
    root the untied embeddings and head and the final norm, 2 · 152,064 · 3584 + 3584 = 1,089,998,336. Gathered in
    bf16: (root + 2 blocks) · 2 = 3.112 GB; unsharded float32 gradients (root + a block) · 4 = 5.292 GB; the
    float32 model sharded 8 ways: 7,615,616,512 · 4 / 8 = 3.808 GB."""
    from dapo.plan import parameter_split

    config = load_config("dapo", RECIPES / "dapo-qwen2.5-math-7b.yaml")
    assert parameter_split(model_config(config)) == (7_615_616_512, 233_057_792)
    text = make_plan(config).text()
    assert (
        "weights, sharded 3.8 GB | gathered: root + 2 blocks 3.1 GB | unsharded gradients: root + a block 5.3 GB"
        in text
    )


def test_sequence_parallelism_and_offload_terms_by_hand():
    """Qwen2.5-Math-7B on 8 FSDP2 ranks, 4,096-token micro-batches, activation checkpointing in bf16.
    ray.sequence_parallel=4: a rank computes 1,024 tokens, 1,024 · (28 + 3) · 3584 · 2 + 1,024 · (12 · 3584 + 4.3 ·
    18,944) · 2 = 0.482 GB of activations; the head 1,024 · 3584 · 4 + 3 · 1,024 · 152,064 · 4 = 1.883 GB.
    ray.offload=all: the sharded weights (3.8 GB), gradients (3.8) and moments (7.6) are in host memory, and a
    colocated engine (72 GB usable less 15.231 GB of bf16 weights) keeps 56.8 GB for its KV cache; without offload
    the rank keeps its sharded weights and moments on the GPU (3.808 + 7.616 GB): 45.345 GB; offload=optimizer keeps
    the weights only: 52.96 GB."""
    recipe = RECIPES / "dapo-qwen2.5-math-7b.yaml"
    text = make_plan(load_config("dapo", recipe, ["ray.sequence_parallel=4", "ray.offload=all"])).text()
    assert "activations, checkpointed (1,024 tokens a micro-batch, 1/4 of 4,096) 0.5 GB | log-prob head 1.9 GB" in text
    assert "host memory  weights, sharded 3.8 GB | gradients 3.8 GB | AdamW moments 7.6 GB = 15.2 GB a rank" in text
    assert "weights, sharded" not in text.split("per rank")[1].split("\n")[0]
    assert "KV cache room: 56.8 GB" in text
    for offload, room in (("none", "45.3"), ("optimizer", "53.0")):
        text = make_plan(load_config("dapo", recipe, [f"ray.offload={offload}"])).text()
        assert f"KV cache room: {room} GB" in text and "host memory" not in text


def test_recipes_are_planned_in_seconds_and_the_paper_run_fits_on_the_paper_hardware(capsys):
    for recipe in ("dapo-qwen2.5-0.5b-gsm8k", "dapo-qwen2.5-math-7b", "dapo-qwen2.5-32b"):
        code = main(["train", "--preset", "dapo", "--config", str(RECIPES / f"{recipe}.yaml"), "--dry-run"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "per rank" in out and "tokens/step" in out and "fits: yes" in out
    # The 32B run: 64 FSDP2 ranks with sequence parallelism 8 train; 16 engines of 4 GPUs generate: 128 GPUs.
    assert "64 rank(s) x 1 GPU (fsdp2, state sharded 64 ways, sequence parallel 8)" in out
    assert "16 vllm worker(s), split, 4 GPU each (total GPUs: 128)" in out
    assert "(2,816 tokens a micro-batch, 1/8 of 22,528)" in out
    assert "engine weights 65.5 GB, over 4 GPUs (tensor parallel): 16.4 GB a GPU" in out
    # The push: 2,048 MB buckets of bf16 tensors; the largest is the 152,064 x 5,120 embedding, 1.56 GB.
    assert (
        "weight sync  buckets of 2,048 MB in bfloat16: rank 0 holds at most a bucket plus one tensor (3.7 GB, the "
        "largest tensor 1.6 GB); the object store keeps the last push (65.5 GB) to resync a restarted worker" in out
    )
    assert "vLLM: eager (no CUDA graphs), prefill chunked, 22,528 tokens a scheduling step" in out


def test_the_vllm_settings_reach_the_engine():
    from dapo.components import vllm_options

    overrides = ["rollout.enforce_eager=false", "rollout.weight_sync_bucket_mb=512"]
    config = load_config("dapo", RECIPES / "dapo-qwen2.5-32b.yaml", overrides)
    options = vllm_options(config)
    assert options["max_model_len"] == 2048 + 20480 == options["max_num_batched_tokens"]
    assert options["enforce_eager"] is False and options["enable_chunked_prefill"] is True
    assert options["tensor_parallel_size"] == 4 and options["weight_sync_bucket_mb"] == 512
    assert "max_num_batched_tokens" not in vllm_options(load_config("dapo", None, []))  # 0: vLLM's own default


@pytest.mark.parametrize("recipe", ["dapo-qwen2.5-32b", "dapo-qwen2.5-math-7b"])
def test_the_paper_recipes_validate_with_avg_at_32_over_the_30_aime_problems(recipe, data_file):
    """aime-2024.parquet holds each of its 30 problems 32 times; data.dedup keeps 30 and rollout.val_n=32 samples
    each 32 times: the paper's avg@32, which the dry run names exactly."""
    data_file("aime-2024.parquet")
    text = make_plan(load_config("dapo", RECIPES / f"{recipe}.yaml")).text()
    assert (
        "validation   aime-2024.parquet: avg@32 over 30 problems (32 samples each, 960 rows, 930 repeated prompts "
        "dropped by data.dedup)" in text
    )


def test_a_32b_engine_on_one_colocated_gpu_is_refused_with_what_to_change(capsys):
    """verl's colocated layout with a one-GPU engine: 65.5 GB of weights and the rank's state leave less than one
    sequence's KV cache (5.9 GB)."""
    colocated = [
        "ray.train_workers=128", "ray.sequence_parallel=8", "ray.rollout_workers=128", "ray.placement=colocated",
        "ray.gpus_per_rollout_worker=0", "rollout.tensor_parallel_size=1",
    ]  # fmt: skip
    recipe = str(RECIPES / "dapo-qwen2.5-32b.yaml")
    assert main(["train", "--preset", "dapo", "--config", recipe, "--dry-run", *colocated]) == 1
    out = capsys.readouterr().out
    assert "generation: after the engine's weights (65.5 GB a GPU)" in out and "rollout.tensor_parallel_size" in out
    assert "a training rank needs" not in out  # the training side fits


def test_engine_tensor_parallelism_needs_gpus_of_its_own():
    from dapo.config import ConfigError

    recipe = RECIPES / "dapo-qwen2.5-32b.yaml"
    with pytest.raises(ConfigError, match=r"ray\.placement=split"):
        load_config("dapo", recipe, ["ray.placement=colocated"])
    with pytest.raises(ConfigError, match=r"ray.gpus_per_rollout_worker.*must equal rollout.tensor_parallel_size"):
        load_config("dapo", recipe, ["ray.gpus_per_rollout_worker=2"])
    with pytest.raises(ConfigError, match=r"rollout\.engine=vllm"):
        load_config("dapo", recipe, ["rollout.engine=builtin"])


def test_lora_adapters_are_counted_as_peft_builds_them_and_replace_the_full_gradients():
    pytest.importorskip("peft")
    from dapo.models.lora import apply_lora
    from dapo.plan import lora_parameters

    model = build_tiny_model(build_char_tokenizer(), "1m")
    targets = ["q_proj", "k_proj", "down_proj"]
    adapted = apply_lora(model, 4, 8.0, 0.0, targets)
    trained = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    # by hand, rank 4, per layer (hidden 128, 2 KV heads x 32, MLP 512): 4 · ((128 + 128) + (128 + 64) + (512 + 128))
    # = 4,352; 4 layers
    assert lora_parameters(model.config, 4, targets) == trained == 4_352 * 4
    text = make_plan(
        load_config("cpu_dapo", None, ["model.lora.rank=4", f"model.lora.target_modules={targets}"])
    ).text()
    assert "LoRA gradients (0.0 M) 0.0 GB | AdamW moments 0.0 GB" in text and "| gradients" not in text
