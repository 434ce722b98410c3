"""LoRA against full fine-tuning on SmolLM2-135M-Instruct: time per step phase and peak memory, at the batch of
`recipes/smollm2-cpu.yaml` (8 prompts x 8 responses <= 32 tokens a step).

Each run is its own process (`dapo train --config recipes/smollm2-cpu.yaml`, `--steps` steps, no evaluation,
no checkpoint but the last, 2 threads), so its peak resident memory (`os.wait4`'s ru_maxrss) is its own: the
GGUF load and de-quantisation, the engine, the update's activations, gradients and AdamW moments. Full and
LoRA runs are interleaved, `--repeats` each; a run's time of a phase is the median over its steps after the
first (which pays for warm-up), then the median over repeats. The runs sample different responses after the
first update, so the phases' work differs a little between them (the lengths are recorded).

The baseline is full fine-tuning. The analytic memory of the trained state (float32 weights' gradients and
AdamW's two moments, 12 bytes per trained parameter) is written beside the measured peak.

    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_lora.py            # ~8 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "smollm2-cpu.yaml"
PHASES = (
    "timing_s/gen", "timing_s/old_log_prob", "timing_s/update_actor", "timing_s/update_weights", "timing_s/step",
)  # fmt: skip
MODES = {"full fine-tuning": [], "LoRA r=16": ["model.lora.rank=16", "actor.lr=5e-5"]}


def run(out: Path, name: str, extra: list[str], steps: int, seed: int) -> dict:
    run_name = f"{name.split()[0].lower()}-{seed}"
    command = [
        sys.executable, "-m", "dapo.cli", "train", "--no-plot", "--config", str(RECIPE),
        f"trainer.total_steps={steps}", "trainer.test_freq=0", "trainer.val_before_train=false",
        "trainer.save_freq=0", "trainer.tensorboard=false", "trainer.progress=false", "trainer.resume=disable",
        f"trainer.seed={seed}", f"trainer.output_dir={out}", f"trainer.run_name={run_name}", *extra,
    ]  # fmt: skip
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed:\n{log[-3000:]}")
    rows = [json.loads(line) for line in (out / run_name / "metrics.jsonl").read_text().splitlines()]
    steady = rows[1:] or rows
    result = {p: statistics.median(r.get(p, 0.0) for r in steady) for p in PHASES}
    result["response_length"] = statistics.fmean(r["response_length/mean"] for r in steady)
    result["mfu_actor"] = statistics.median(r.get("perf/mfu/actor", 0.0) for r in steady)
    result["peak_rss_gb"] = usage.ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux
    return result


def trained_parameters(extra: list[str]) -> int:
    """Parameters the optimiser updates, counted from the model's config as the dry run does (no weights)."""
    from dapo.config import load_config
    from dapo.plan import count_parameters, lora_parameters, model_config

    config = load_config("cpu_dapo", RECIPE, extra)
    lora = config.model.lora
    if lora.rank > 0:
        return lora_parameters(model_config(config), lora.rank, lora.target_modules)
    return count_parameters(model_config(config))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "lora-smollm2.json"))
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.repeats):
            for name, extra in MODES.items():
                runs[name].append(run(Path(tmp), name, extra, args.steps, seed))
                print(name, seed, {k: round(v, 3) for k, v in runs[name][-1].items() if isinstance(v, float)})
    summary = {}
    for name, extra in MODES.items():
        trained = trained_parameters(extra)
        summary[name] = {
            **{key: statistics.median(r[key] for r in runs[name]) for key in (*PHASES, "peak_rss_gb", "mfu_actor")},
            "trained_parameters": trained,
            "trained_state_gb": 12 * trained / 1e9,  # fp32 gradient + AdamW's exp_avg and exp_avg_sq
        }
    base = summary["full fine-tuning"]
    for name in MODES:
        summary[name]["step_vs_full"] = summary[name]["timing_s/step"] / base["timing_s/step"]
        summary[name]["update_vs_full"] = summary[name]["timing_s/update_actor"] / base["timing_s/update_actor"]
    record = {
        "benchmark": "bench_lora.py",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {"recipe": str(RECIPE.relative_to(ROOT)), "steps": args.steps, "repeats": args.repeats},
        "summary": summary,
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    for name, s in summary.items():
        print(
            f"{name:18s} step {s['timing_s/step']:.1f} s ({s['step_vs_full']:.2f}x) | gen {s['timing_s/gen']:.1f} s | "
            f"update {s['timing_s/update_actor']:.1f} s ({s['update_vs_full']:.2f}x) | "
            f"peak RSS {s['peak_rss_gb']:.2f} GB | trained {s['trained_parameters'] / 1e6:.1f} M "
            f"({s['trained_state_gb']:.2f} GB of grads + moments)"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
