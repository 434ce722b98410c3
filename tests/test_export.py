"""dapo.export: a checkpoint (full or DCP-sharded, full fine-tuning or LoRA) becomes a Hugging Face directory
that `from_pretrained` loads with the trained logits, in bounded shards, and bad input is refused in one line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from dapo.checkpoint import CheckpointError, CheckpointManager
from dapo.cli import main
from dapo.config import Config
from dapo.export import ExportError, byte_size, export_checkpoint, shard_plan
from dapo.models import build_char_tokenizer, build_tiny_model, save_pretrained_pair

IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def base(tok, tmp_path_factory) -> Path:
    """The run's model.path: the tiny model as `from_pretrained` reads it."""
    return save_pretrained_pair(build_tiny_model(tok, "1m", seed=0), tok, tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def trained(tok):
    """The base with every weight moved, so that an export of the base itself could not pass for it."""
    model = build_tiny_model(tok, "1m", seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def run_config(base: Path, lora_rank: int = 0) -> dict:
    config = Config()
    config.model.path = str(base)
    config.model.lora.rank = lora_rank
    config.model.lora.alpha = 8.0
    config.model.lora.target_modules = ["q_proj", "v_proj", "up_proj"]
    return config.to_dict()  # optim.betas is a tuple: CheckpointManager writes config.pt, as in a real run


def full_checkpoint(root: Path, weights: dict, config: dict) -> Path:
    """A checkpoint as `Trainer.save_checkpoint` writes it (manifest included), with the parts export reads."""
    return CheckpointManager(root / "checkpoints").save(3, {"model": weights, "config": config})


def sharded_checkpoint(root: Path, weights: dict, config: dict) -> Path:
    """policy_shards/ written by DCP in this process (no process group), beside a hand-written config.json."""
    import torch.distributed.checkpoint as dcp

    step = root / "checkpoints" / "global_step_3"
    step.mkdir(parents=True)
    optimizer = {"state": {name: {"exp_avg": torch.ones_like(t), "step": 3} for name, t in weights.items()}}
    with warnings.catch_warnings():  # DCP warns that it assumes one process: it is meant to
        warnings.simplefilter("ignore")
        dcp.save({"model": weights, "optimizer": optimizer}, checkpoint_id=step / "policy_shards")
    (step / "config.json").write_text(json.dumps(config))
    return step


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def weight_files(out: Path) -> list[Path]:
    return sorted(out.glob("*.safetensors"))


def saved_tensors(out: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in weight_files(out):
        with safe_open(str(path), framework="pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 (safe_open is no dict)
    return tensors


@pytest.mark.parametrize("form", ["full", "sharded"])
def test_the_export_loads_with_the_trained_logits(tmp_path, base, trained, form):
    make = full_checkpoint if form == "full" else sharded_checkpoint
    step = make(tmp_path / "run", trained.state_dict(), run_config(base))
    result = export_checkpoint(step, tmp_path / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    torch.testing.assert_close(logits(loaded), logits(trained), atol=1e-6, rtol=0)
    # Tied embeddings: lm_head.weight is not written; optimiser state never is. One file suffices here.
    assert set(saved_tensors(tmp_path / "hf")) == set(trained.state_dict()) - {"lm_head.weight"}
    assert [p.name for p in weight_files(tmp_path / "hf")] == ["model.safetensors"]
    for name in ("config.json", "tokenizer.json", "generation_config.json", "dapo_config.json"):
        assert name in result.files, name
    assert json.loads((tmp_path / "hf" / "dapo_config.json").read_text())["model"]["path"] == str(base)
    assert result.tensors == len(trained.state_dict()) - 1
    assert not list(tmp_path.glob(".tmp-*"))  # built beside it, renamed into place


@pytest.mark.parametrize("form", ["full", "sharded"])
def test_small_shards_keep_the_memory_held_near_one_shard_plus_one_tensor(tmp_path, base, trained, form):
    make = full_checkpoint if form == "full" else sharded_checkpoint
    step = make(tmp_path / "run", trained.state_dict(), run_config(base))
    max_bytes = 100_000  # the 1m model: 64 KiB attention projections, 256 KiB MLP matrices
    result = export_checkpoint(step, tmp_path / "hf", max_shard_bytes=max_bytes)
    out = tmp_path / "hf"
    shards = weight_files(out)
    assert len(shards) > 5 and shards[0].name == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    sizes = {name: t.nbytes for name, t in saved_tensors(out).items()}
    assert index["metadata"]["total_size"] == sum(sizes.values()) == result.total_bytes
    for path in shards:  # each shard within the bound, unless it holds one larger tensor alone
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
        assert sum(sizes[n] for n in names) <= max_bytes or len(names) == 1, path.name
    largest = max(sizes.values())
    assert largest <= result.peak_bytes <= max_bytes + largest < result.total_bytes / 3
    loaded = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(logits(loaded), logits(trained), atol=1e-6, rtol=0)


def test_dtype_casts_every_weight_and_the_config(tmp_path, base, trained):
    step = full_checkpoint(tmp_path / "run", trained.state_dict(), run_config(base))
    export_checkpoint(step, tmp_path / "hf", dtype="bfloat16")
    tensors = saved_tensors(tmp_path / "hf")
    assert tensors and all(t.dtype == torch.bfloat16 for t in tensors.values())
    for name, t in tensors.items():
        assert torch.equal(t, trained.state_dict()[name].bfloat16()), name
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert loaded.dtype == torch.bfloat16


def test_a_lora_checkpoint_exports_the_merged_model(tmp_path, tok, base):
    pytest.importorskip("peft")
    from dapo.models.lora import adapter_state_dict, apply_lora

    config = run_config(base, lora_rank=4)
    lora = config["model"]["lora"]
    model = apply_lora(build_tiny_model(tok, "1m", seed=0), 4, lora["alpha"], 0.0, lora["target_modules"])
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # B = 0 at initialisation would make the adapter a no-op
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    step = full_checkpoint(tmp_path / "run", adapter_state_dict(model.state_dict()), config)
    export_checkpoint(step, tmp_path / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert not any(".lora_" in k for k in loaded.state_dict())
    torch.testing.assert_close(logits(loaded), logits(model.eval()), atol=1e-5, rtol=0)
    assert not torch.allclose(logits(loaded), logits(build_tiny_model(tok, "1m", seed=0)), atol=1e-3)


def test_the_cli_exports_and_refuses_bad_input_in_one_line(tmp_path, base, trained, capsys):
    step = full_checkpoint(tmp_path / "run", trained.state_dict(), run_config(base))
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(step), "--out", str(out), "--max-shard-bytes", "200KB"]) == 0
    assert "[export]" in capsys.readouterr().out and (out / "model.safetensors.index.json").is_file()
    bad = [
        (["--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")], "no such directory"),
        (["--checkpoint", str(base), "--out", str(tmp_path / "b")], "not a dapo checkpoint"),
        (["--checkpoint", str(step), "--out", str(out)], "not an empty directory"),
    ]
    for args, says in bad:
        assert main(["export", *args]) == 1
        err = capsys.readouterr().err
        assert "ExportError" in err and says in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err


def test_refusals_name_the_problem(tmp_path, base, trained):
    weights = trained.state_dict()
    no_weights = tmp_path / "empty" / "global_step_1"
    no_weights.mkdir(parents=True)
    (no_weights / "config.json").write_text(json.dumps(run_config(base)))
    with pytest.raises(ExportError, match="holds no policy weights"):
        export_checkpoint(no_weights, tmp_path / "a")
    gone = full_checkpoint(tmp_path / "gone", weights, run_config(tmp_path / "deleted-base"))
    with pytest.raises(ExportError, match=r"base model .* cannot be read: model.path=.*deleted-base does not exist"):
        export_checkpoint(gone, tmp_path / "b")
    step = full_checkpoint(tmp_path / "run", weights, run_config(base))
    data = bytearray((step / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (step / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        export_checkpoint(step, tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_weights_that_are_not_the_base_model_s_are_refused_before_writing(tmp_path, base, trained):
    weights = {f"transformer.{k}": v for k, v in trained.state_dict().items()}
    step = full_checkpoint(tmp_path / "run", weights, run_config(base))
    with pytest.raises(ExportError, match=r"do not match the base model's LlamaConfig: missing \["):
        export_checkpoint(step, tmp_path / "hf")
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".tmp-*"))


def test_shard_plan_and_byte_sizes():
    # bound 10: [6, 4] make 10; 7 opens a new shard; 12 > 10 stands alone; [1, 2] fit together
    assert shard_plan([6, 4, 7, 12, 1, 2], 10) == [[0, 1], [2], [3], [4, 5]]
    assert shard_plan([3], 10) == [[0]]
    assert byte_size("1024") == 1024 and byte_size("5GB") == 5 * 10**9 and byte_size("2MiB") == 2 * 2**20
    with pytest.raises(ValueError, match="not a byte size"):
        byte_size("5 parsecs")
