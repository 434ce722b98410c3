"""The GPU check's measurements (scripts/gpu_check.sh runs it after the `cuda` tests): a short DAPO run on the
device, the built-in engine against Hugging Face `generate` there, and the update's MFU against the device's
measured bf16 matmul peak. Everything is built in code (no download); results go to one JSON file.

    python3 bench/gpu_check.py --out bench/results/gpu-check.json          # on the GPU machine, ~4 min
    .venv/bin/python bench/gpu_check.py --device cpu --quick --out /tmp/g.json   # the same code on a CPU, ~1 min

The run: `builtin:tiny-100m` (103.9M parameters), warm-started on the built-in task (`dapo sft`, on the CPU, as
every built-in base), then 20 DAPO steps on the device in bf16-mixed, the shared-prefix forward, the built-in
engine. What it shows is that the path runs on the device, its speed and MFU; 20 steps are not a learning result.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def device_facts(device: str) -> dict:
    from dapo.metrics import measure_matmul_peak

    facts = {"device": device, "torch": torch.__version__, "python": platform.python_version()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        facts.update(name=props.name, memory_gb=props.total_memory / 1e9, capability=f"{props.major}.{props.minor}")
    else:
        facts.update(name=platform.processor() or platform.machine())
    facts["bf16_matmul_peak_tflops"] = (
        measure_matmul_peak(torch.get_num_threads(), dtype=torch.bfloat16, device=device) / 1e12
    )
    facts["fp32_matmul_peak_tflops"] = (
        measure_matmul_peak(torch.get_num_threads(), dtype=torch.float32, device=device) / 1e12
    )
    return facts


def training_run(device: str, size: str, steps: int, sft_steps: int, out_dir: Path) -> dict:
    """A seeded DAPO run on `device`: per-step time, MFU, reward, and the final held-out accuracy."""
    from dapo.config import load_config
    from dapo.trainer import Trainer

    overrides = [
        f"model.path=builtin:tiny-{size}", f"model.warm_start.steps={sft_steps}", f"trainer.device={device}",
        "actor.precision=bf16-mixed", f"trainer.total_steps={steps}", "trainer.test_freq=0", "trainer.save_freq=0",
        "trainer.val_before_train=false", "trainer.tensorboard=false", "trainer.progress=false",
        "trainer.resume=disable", f"trainer.output_dir={out_dir}", "trainer.run_name=gpu-check", "data.val_size=64",
        "algo.dynamic_sampling.max_gen_batches=40",  # a briefly warm-started base: informative groups are rarer
    ]  # fmt: skip
    start = time.perf_counter()
    trainer = Trainer(load_config("cpu_dapo", None, overrides), log_to_console=False)
    built_s = time.perf_counter() - start
    try:
        trainer.train()
        final = trainer.evaluate_now()
    finally:
        trainer.close()
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    later = rows[len(rows) // 2 :] or rows  # past the first steps' warm-up
    return {
        "model": f"builtin:tiny-{size}",
        "parameters": trainer.num_params,
        "steps": len(rows),
        "build_s": built_s,
        "step_s_median": statistics.median(r["perf/time_per_step"] for r in later),
        "update_s_median": statistics.median(r.get("timing_s/update_actor", float("nan")) for r in later),
        "mfu_actor_median": statistics.median(r["perf/mfu/actor"] for r in later),
        "reward_first_last": [rows[0]["critic/score/mean"], rows[-1]["critic/score/mean"]],
        "held_out": {k: v for k, v in final.items() if k.startswith("val-core/")},
    }


def engine_against_generate(device: str, size: str, quick: bool) -> dict:
    """The built-in engine and HF `generate` on the same prompts (sampling, same lengths forced): tokens a second,
    and the greedy continuation of the one equal to the other's."""
    from dapo.models import build_char_tokenizer, build_tiny_model
    from dapo.rollout import BuiltinEngine, SamplingParams

    tok = build_char_tokenizer()
    model = build_tiny_model(tok, size, seed=0).to(device).eval()
    prompts = [tok(f"{a}+{b}=")["input_ids"] for a in range(8) for b in (3, 17)][: 4 if quick else 16]
    n, new = (2, 16) if quick else (8, 128)
    engine = BuiltinEngine(model, tok, eos_token_ids=())

    def ours() -> int:
        return int(engine.generate(prompts, n, SamplingParams(max_new_tokens=new), seed=0).response_lengths.sum())

    def theirs() -> int:
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts], device=device)
        mask = (ids != tok.pad_token_id).long()
        out = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=new, min_new_tokens=new,
            num_return_sequences=n, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
        return int((out.shape[1] - width) * out.shape[0])

    timings: dict[str, list[float]] = {"builtin": [], "hf_generate": []}
    tokens = {}
    for i in range(3):
        for name, run in (("builtin", ours), ("hf_generate", theirs))[:: 1 if i % 2 == 0 else -1]:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            tokens[name] = run()
            if device == "cuda":
                torch.cuda.synchronize()
            if i > 0:
                timings[name].append(time.perf_counter() - start)
    rates = {name: tokens[name] / statistics.median(t) for name, t in timings.items()}
    greedy = engine.generate(prompts[:2], 1, SamplingParams(greedy=True, max_new_tokens=16), seed=0)
    with torch.no_grad():
        ids = torch.tensor([prompts[0]], device=device)
        hf = model.generate(input_ids=ids, do_sample=False, max_new_tokens=16, pad_token_id=tok.pad_token_id)
    same = greedy.response_ids[0, :16].tolist() == hf[0, ids.shape[1] :].tolist()
    return {
        "tokens_per_s": rates, "ratio": rates["builtin"] / rates["hf_generate"], "greedy_equal_to_hf": same,
        "rows": len(prompts) * n, "new_tokens": new,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu-check.json"))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="a 1M model, 2 steps: the code path only")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (use --device cpu to run the same code on the CPU)", file=sys.stderr)
        return 2
    size, steps, sft_steps = ("1m", 2, 50) if args.quick else ("100m", 20, 150)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record: dict = {"benchmark": "gpu_check.py", "quick": args.quick}
    sections = (
        ("machine", lambda: device_facts(args.device)),
        ("engine", lambda: engine_against_generate(args.device, "1m" if args.quick else "20m", args.quick)),
        (
            "training",
            lambda: training_run(args.device, size, steps, sft_steps, Path(tempfile.mkdtemp(prefix="dapo-gpu-"))),
        ),
    )
    failed = False
    for name, measure in sections:  # each section on its own: one failure still leaves the others' results
        start = time.perf_counter()
        try:
            record[name] = measure()
        except Exception as error:  # the check reports what broke, with its type, and goes on
            record[name] = {"error": f"{type(error).__name__}: {error}"}
            failed = True
        record[name]["seconds"] = time.perf_counter() - start
        print(f"[gpu-check] {name}: {json.dumps(record[name])[:400]}", flush=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
