"""The SmolLM2 recipe's results from its runs: the before/after table (strict and lenient held-out accuracy,
per seed, mean and 95 % t-interval) and the curves, mean and min-max band over seeds.

    .venv/bin/python scripts/smollm2_report.py --group "full fine-tuning=runs/smollm2/seed0,runs/smollm2/seed1" \
        --group "LoRA r=16=runs/smollm2/lora-seed0" --out docs/smollm2

Each run directory is an ordinary `dapo train` run (its metrics.jsonl). Writes `<out>/results.md` and
`<out>/curves.png`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from dapo.ablation import RungResult, mean_band, mean_interval
from dapo.metrics import merge_by_step, read_jsonl_metrics

STRICT, LENIENT = "val-core/arith/acc/mean@4", "val-aux/arith/lenient_acc/mean@4"
PANELS = [  # (title, [(key, label suffix, line style)], evaluations: points in %)
    ("held-out accuracy (avg@4)", [(STRICT, "strict", "-"), (LENIENT, "lenient", ":")], True),
    ("accuracy of every sampled response (training, T = 1)", [("train/generated_acc/mean", "", "-")], True),
    ("entropy of the policy (nats a token)", [("actor/entropy", "", "-")], False),
    ("mean response length (tokens)", [("response_length/mean", "", "-")], False),
]


def load(spec: str) -> RungResult:
    name, _, paths = spec.rpartition("=")  # the name may hold "=" (LoRA r=16), a path does not
    result = RungResult(name)
    for seed, path in enumerate(p for p in paths.split(",") if p):
        result.rows[seed] = merge_by_step(read_jsonl_metrics(Path(path) / "metrics.jsonl"))
    return result


def percent(values: list[float]) -> str:
    mean, half = mean_interval(values)
    return f"{100 * mean:.1f}" + ("" if math.isnan(half) else f" ± {100 * half:.1f}")


def table(groups: list[RungResult]) -> list[str]:
    lines = [
        "| run | seeds | strict, before | strict, after | gain | lenient, before | lenient, after | gain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        cells = []
        for key in (STRICT, LENIENT):
            curves = [g.curve(seed, key)[1] for seed in g.rows]
            before, after = [c[0] for c in curves], [c[-1] for c in curves]
            cells += [percent(before), percent(after), percent([a - b for a, b in zip(after, before, strict=True)])]
        lines.append(f"| {g.preset} | {len(g.rows)} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed (held-out %, strict / lenient, at each evaluation):", ""]
    for g in groups:
        for seed in g.rows:
            steps, strict = g.curve(seed, STRICT)
            lenient = dict(zip(*g.curve(seed, LENIENT), strict=True))
            points = ", ".join(
                f"step {s}: {100 * v:.1f} / {100 * lenient.get(s, math.nan):.1f}"
                for s, v in zip(steps, strict, strict=True)
            )
            lines.append(f"- {g.preset}, seed {seed}: {points}")
    return lines


def figure(groups: list[RungResult], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (title, series, percent_scale) in zip(axes.flat, PANELS, strict=True):
        scale = 100 if percent_scale else 1
        for i, g in enumerate(groups):
            color = plt.get_cmap("tab10")(i)
            for key, suffix, style in series:
                steps, mean, low, high = mean_band(g, key)
                if not steps:
                    continue
                sparse = key in (STRICT, LENIENT)  # evaluations: points
                shown = mean  # 30 steps: drawn raw, so that the line stays inside its band
                label = f"{g.preset}{', ' + suffix if suffix else ''} ({len(g.rows)} seeds)"
                ax.plot(steps, [scale * v for v in shown], style, color=color, marker="o" if sparse else None,
                        lw=1.8, label=label)  # fmt: skip
                ax.fill_between(
                    steps, [scale * v for v in low], [scale * v for v in high], color=color, alpha=0.12, lw=0
                )
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.set_ylabel("%" if percent_scale else "")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="line: mean; band: min-max over seeds", title_fontsize=8)
    fig.suptitle("DAPO on SmolLM2-135M-Instruct, arith_chat levels 1-2 (recipes/smollm2-cpu.yaml)")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", action="append", required=True, help='"name=run_dir,run_dir,..." (one per seed)')
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = [load(spec) for spec in args.group]
    text = ["# SmolLM2-135M-Instruct on `arith_chat`: held-out accuracy before and after", "", *table(groups), ""]
    (out / "results.md").write_text("\n".join(text))
    figure(groups, out)
    print(f"wrote {out / 'results.md'} and {out / 'curves.png'}")


if __name__ == "__main__":
    main()
