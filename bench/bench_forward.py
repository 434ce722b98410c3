"""The training forward/backward alone: the shared-prefix forward against the model's own padded forward.

Workload (one update of the trainer benchmark's shape): 8 prompts × 8 responses, response lengths uniform in
[15, 64] tokens, prompts of 21 tokens (the arith task's) or 30-45 tokens, a random-init tiny Llama, fp32, one
thread. Each timed call is forward → log-softmax of the response logits → backward, as in the update. The two
forwards alternate after a warm-up call; medians of `--repeats` calls; the ratio is measured in the same run.

    flock /tmp/dapo-heavy.lock .venv/bin/python bench/bench_forward.py     # ~1 min
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from dapo.models import build_char_tokenizer, build_tiny_model
from dapo.models.shared_prefix import SharedPrefixForward
from dapo.workers.batch import batch_from_prompts, position_ids

ROOT = Path(__file__).resolve().parents[1]
GROUPS, PER_GROUP, WIDTH = 8, 8, 64


def make_batch(vocab: int, prompt_range: tuple[int, int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompt_lengths = torch.randint(prompt_range[0], prompt_range[1] + 1, (GROUPS,), generator=g).tolist()
    prompts = [torch.randint(3, vocab, (n,), generator=g) for n in prompt_lengths]
    row_prompt = torch.arange(GROUPS).repeat_interleave(PER_GROUP)
    lengths = torch.randint(15, WIDTH + 1, (GROUPS * PER_GROUP,), generator=g)
    responses = torch.randint(3, vocab, (GROUPS * PER_GROUP, WIDTH), generator=g)
    return prompts, row_prompt, responses, lengths


def update_batch(vocab: int):
    """`make_batch`'s 8 x 8 responses after 21-token prompts as a TrainBatch with GRPO advantages of random 0/1
    rewards: the workload of the update benchmarks (checkpointing, precision, mechanisms)."""
    from dapo import algo

    batch = batch_from_prompts(*make_batch(vocab, (21, 21)))
    rewards = torch.randint(0, 2, (GROUPS, PER_GROUP), generator=torch.Generator().manual_seed(0)).float()
    advantages = algo.broadcast_to_tokens(algo.grpo_advantages(rewards).reshape(-1), batch.response_mask)
    return batch.replace(advantages=advantages)


def bench(size: str, prompt_range: tuple[int, int], repeats: int) -> dict:
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, size, arch="llama").train()
    prompts, row_prompt, responses, lengths = make_batch(model.config.vocab_size, prompt_range)
    batch = batch_from_prompts(prompts, row_prompt, responses, lengths)  # the trainer's padded layout
    ids, mask, tp = batch.input_ids, batch.attention_mask, batch.prompt_width
    shared = SharedPrefixForward(model)

    def own_forward():
        out = model(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids(mask), use_cache=False)
        torch.log_softmax(out.logits[:, tp - 1 : tp - 1 + WIDTH], dim=-1).sum().backward()

    def shared_forward():
        torch.log_softmax(shared.response_logits(prompts, row_prompt, responses, lengths), dim=-1).sum().backward()

    times: dict[str, list[float]] = {"own": [], "shared": []}
    for i in range(repeats + 1):
        for name, fn in (("own", own_forward), ("shared", shared_forward)):
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            fn()
            if i > 0:  # the first round is the warm-up
                times[name].append(time.perf_counter() - start)
    own, mine = statistics.median(times["own"]), statistics.median(times["shared"])
    return {
        "size": size,
        "prompt_tokens": list(prompt_range),
        "tokens_padded": int(mask.numel()),
        "tokens_real": int(mask.sum()),
        "tokens_shared": sum(len(p) for p in prompts) + int((lengths - 1).sum()),
        "own_forward_median_s": own,
        "shared_prefix_median_s": mine,
        "ratio": own / mine,
        "times": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1m", "5m"])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "forward.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [bench(size, prompts, args.repeats) for size in args.sizes for prompts in ((21, 21), (30, 45))]
    print("| size | prompt tokens | tokens: padded / real / shared | own forward s | shared-prefix s | ratio |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['size']} | {r['prompt_tokens'][0]}-{r['prompt_tokens'][1]} | {r['tokens_padded']} / "
            f"{r['tokens_real']} / {r['tokens_shared']} | {r['own_forward_median_s']:.3f} | "
            f"{r['shared_prefix_median_s']:.3f} | {r['ratio']:.2f}x |"
        )
    machine = {"python": platform.python_version(), "torch": torch.__version__, "threads": 1}
    args.out.write_text(json.dumps({"machine": machine, "repeats": args.repeats, "results": results}, indent=1))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
