"""The `dapo` command: thin wrappers that resolve a config and call the library.

dapo train  [--preset NAME] [--config FILE.yaml] [section.field=value ...]
dapo eval   [--preset NAME] [--config FILE.yaml] [--checkpoint DIR] [section.field=value ...]
dapo sft    [--size 1m] [--level 2] [--steps N] [--shortcut-rate R] [--repeat-rate R] [--out DIR]
dapo config [--preset NAME] [--config FILE.yaml] [--fields] [section.field=value ...]
dapo export --checkpoint DIR --out HF_DIR [--dtype float32|bfloat16|float16] [--max-shard-bytes N]
dapo ablate [--ladder cpu|paper | --presets NAME ...] [--seeds N] [--out DIR] [--quick] [--report-only] [key=value ...]
dapo presets
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dapo.config import PRESETS, ConfigError, field_docs, load_config
from dapo.errors import DapoError


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="cpu_dapo", help=f"named preset: {', '.join(PRESETS)} (default cpu_dapo)")
    parser.add_argument("--config", default=None, help="YAML file applied on top of the preset")
    parser.add_argument("overrides", nargs="*", help="dotted overrides applied last, e.g. algo.clip_eps_high=0.28")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dapo",
        description="DAPO / GRPO / PPO for LLM reinforcement learning with verifiable rewards.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="`dapo config --fields` lists every config field with its meaning and default.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run RL training (DAPO on the built-in CPU task by default)")
    _add_config_arguments(train)
    train.add_argument("--no-plot", action="store_true", help="do not write the curves PNG at the end")
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the config and print the plan (ranks, placement, parameters, memory per rank, KV cache, "
        "tokens per step) without loading weights; exit 1 if it does not fit the resources it names",
    )
    evaluate = sub.add_parser("eval", help="evaluate a policy: avg@k, pass@k, maj@k per data source")
    _add_config_arguments(evaluate)
    evaluate.add_argument("--checkpoint", default=None, help="global_step_N directory to load the policy from")
    evaluate.add_argument(
        "--out", default=None, help="directory for the results table: eval.md (Markdown) and eval.json (every metric)"
    )
    sft = sub.add_parser("sft", help="build the tiny model and warm-start it on the built-in task")
    sft.add_argument("--size", default="1m", choices=["1m", "5m", "20m"])
    sft.add_argument("--level", type=int, default=2, help="difficulty of the arithmetic task")
    sft.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the CPU default's recipe)")
    sft.add_argument(
        "--shortcut-rate",
        type=float,
        default=None,
        help="share of demonstrations that give the bare answer instead of the worked solution "
        "(default: the CPU default's recipe)",
    )
    sft.add_argument(
        "--repeat-rate",
        type=float,
        default=None,
        help="share of demonstrations that write their steps 2-3 times over before the answer, a repetition loop "
        "(default 0; the CPU ablation's base uses 0.1)",
    )
    sft.add_argument(
        "--out", default=None, help="output directory (default runs/base/<name naming size, level and recipe>)"
    )
    config = sub.add_parser("config", help="print the resolved config (or, with --fields, every field's meaning)")
    _add_config_arguments(config)
    config.add_argument("--fields", action="store_true", help="list every field, its default and its meaning")
    sub.add_parser("presets", help="list the presets")
    _add_export_parser(sub)
    ablate = sub.add_parser(
        "ablate",
        help="run the paper's ablation ladder over seeds and write a report (table + figures)",
        description="Runs every preset of a ladder (each adds one technique of DAPO's Table 1 to the one "
        "before) over --seeds seeds, skipping finished runs and resuming killed ones, then writes "
        "<out>/report.md with the table, steps-to-baseline and figures.",
    )
    ablate.add_argument("--ladder", default=None, help="cpu (default) or paper; ignored with --presets")
    ablate.add_argument("--presets", nargs="+", default=None, help="any presets, in ladder order")
    ablate.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per preset (default 3)")
    ablate.add_argument("--out", default="runs/ablation", help="output directory (runs/, report.md, PNGs)")
    ablate.add_argument("--quick", action="store_true", help="2 steps of tiny batches: a smoke run in minutes")
    ablate.add_argument("--report-only", action="store_true", help="write the report from the finished runs")
    ablate.add_argument("overrides", nargs="*", help="config overrides applied to every run (key=value)")
    return parser


def _add_export_parser(sub) -> None:
    export = sub.add_parser(
        "export",
        help="write a checkpoint (global_step_N) as a Hugging Face model directory, tensor by tensor",
        description="Writes the policy of one checkpoint directory (model.safetensors, or the policy_shards/ "
        "written by N ranks) as a Hugging Face model directory: safetensors weights in shards of at most "
        "--max-shard-bytes, the base model's config.json and tokenizer (from the run config's model.path), and "
        "dapo_config.json. The weights are streamed tensor by tensor: the export holds about one shard plus one "
        "tensor, not the model. A LoRA checkpoint holds only the adapter: it is merged into the base model, "
        "which that path loads whole into memory.",
    )
    export.add_argument("--checkpoint", required=True, help="a .../checkpoints/global_step_N directory")
    export.add_argument("--out", required=True, help="the model directory to write (new, or empty)")
    export.add_argument(
        "--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="cast the weights (default: as saved)"
    )
    export.add_argument(
        "--max-shard-bytes",
        type=_byte_size,
        default=None,
        help="most bytes per weights file, e.g. 5GB or 500MiB (default: the largest tensor or 1 GiB, whichever "
        "is larger)",
    )


def _byte_size(text: str) -> int:
    # Imported when parsed, not at the top: building the parser must not import torch (`dapo --help` stays fast).
    from dapo.export import byte_size

    try:
        return byte_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _train(args) -> int:
    from dapo.report import plot_training_curves
    from dapo.trainer import Trainer

    config = load_config(args.preset, args.config, args.overrides)
    if args.dry_run:
        from dapo.plan import make_plan

        plan = make_plan(config)
        print(plan.text())
        return 1 if plan.problems else 0
    trainer = Trainer(config)
    print(f"[dapo] run directory: {trainer.run_dir}")
    try:
        trainer.train()
        export_dir = trainer.export(trainer.run_dir / "policy")  # before close: Ray ranks hold the weights
    finally:
        trainer.close()
    summary = _summary(trainer.run_dir)
    if not args.no_plot:
        png = plot_training_curves(
            trainer.run_dir / "metrics.jsonl", trainer.run_dir / "curves.png", title=config.trainer.run_name
        )
        summary.append(f"curves:      {png}")
    summary.append(f"policy:      {export_dir} (a Hugging Face model directory)")
    summary.append(f"metrics:     {trainer.run_dir / 'metrics.jsonl'} (TensorBoard: {trainer.run_dir / 'tensorboard'})")
    print("\n".join(summary))
    return 0


def _summary(run_dir: Path) -> list[str]:
    from dapo.metrics import read_jsonl_metrics

    rows = read_jsonl_metrics(run_dir / "metrics.jsonl")
    val_rows = [r for r in rows if any(k.startswith("val-core/") for k in r)]
    lines = ["", "=" * 72, "DAPO run finished"]
    if val_rows:
        first, last = val_rows[0], val_rows[-1]
        for key in sorted(k for k in last if k.startswith("val-core/")):
            before, after = first.get(key), last[key]
            if before is not None:
                lines.append(
                    f"held-out {key.removeprefix('val-core/')}: {100 * before:.1f}% (step {first['step']}) -> "
                    f"{100 * after:.1f}% (step {last['step']})  [{100 * (after - before):+.1f} points]"
                )
    train_rows = [r for r in rows if "train/acc/mean" in r]
    if train_rows:
        k = max(1, len(train_rows) // 5)
        head = sum(r["train/acc/mean"] for r in train_rows[:k]) / k
        tail = sum(r["train/acc/mean"] for r in train_rows[-k:]) / k
        lines.append(f"training accuracy (first {k} vs last {k} steps): {100 * head:.1f}% -> {100 * tail:.1f}%")
    lines.append(f"run:         {run_dir}")
    return lines


def _evaluate(args) -> int:
    from dapo.checkpoint import CheckpointManager, ShardedState
    from dapo.step.evaluation import format_eval
    from dapo.trainer import Trainer

    # An evaluation is never a resume: it must not touch the training run's logs, config or checkpoints.
    overrides = [*args.overrides, "trainer.resume=disable", "trainer.tensorboard=false", "trainer.progress=false"]
    config = load_config(args.preset, args.config, overrides)
    config.trainer.run_name += "-eval"
    trainer = Trainer(config)
    try:
        if args.checkpoint:
            path = Path(args.checkpoint)
            step, state = CheckpointManager(path.parent).load(int(path.name.rsplit("_", 1)[-1]))
            if isinstance(state.get("policy_shards"), ShardedState):
                trainer.policy.load_weights_from_shards(state["policy_shards"].path)
            else:
                trainer.policy.load_weights(state["model"])
            trainer.policy.push_weights(trainer.engine)
            print(f"[eval] policy from {path} (step {step})")
        metrics = trainer.evaluate_now()
    finally:
        trainer.close()
    layouts = trainer.data.val_layouts
    print(format_eval(metrics, layouts))
    for key, value in sorted(metrics.items()):
        print(f"{key}: {value:.4f}")
    if args.out:
        _write_eval(Path(args.out), metrics, config, args.checkpoint, layouts)
    return 0


def _write_eval(out: Path, metrics: dict, config, checkpoint: str | None, layouts: dict | None = None) -> None:
    import json

    from dapo.step.evaluation import results_markdown, results_rows

    out.mkdir(parents=True, exist_ok=True)
    policy = checkpoint or config.model.path
    r = config.rollout
    title = f"Evaluation of {policy}: k={r.val_n}, temperature {r.val_temperature}, top-p {r.val_top_p}"
    rows = results_rows(metrics, layouts)
    (out / "eval.md").write_text(results_markdown(rows, title))
    summary = {"policy": policy, "val_files": config.data.val_files, "k": r.val_n, "rows": rows, "metrics": metrics}
    (out / "eval.json").write_text(json.dumps(summary, indent=1))
    print(f"[eval] results: {out / 'eval.md'}, {out / 'eval.json'}")


def _sft(args) -> int:
    from dapo.sft import SftSettings, base_model_name, build_base_model, check_rates

    chosen = {"steps": args.steps, "shortcut_rate": args.shortcut_rate, "repeat_rate": args.repeat_rate}
    settings = SftSettings(**{k: v for k, v in chosen.items() if v is not None})
    try:
        check_rates(settings.shortcut_rate, settings.repeat_rate)
    except ValueError as error:
        raise ConfigError(f"--shortcut-rate / --repeat-rate: {error}") from None
    out = Path(args.out or f"runs/base/{base_model_name(args.size, args.level, settings)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    build_base_model(args.size, args.level, out, settings)
    print(f"[sft] saved {out}; train on it with `dapo train model.path={out}`")
    return 0


def _ablate(args) -> int:
    from dapo.ablation import plan, run_all, write_report

    the_plan = plan(args.ladder, args.presets, args.seeds, args.out, args.quick, args.overrides)
    if not args.report_only:
        run_all(the_plan)
    report = write_report(the_plan, title="DAPO ablation" + (" (quick)" if args.quick else ""))
    print(f"[ablate] report: {report}")
    return 0


def _export(args) -> int:
    from dapo.export import export_checkpoint

    result = export_checkpoint(
        Path(args.checkpoint), Path(args.out), dtype=args.dtype, max_shard_bytes=args.max_shard_bytes
    )
    weights = [f for f in result.files if f.endswith(".safetensors")]
    print(
        f"[export] {result.out}: {result.tensors} tensors, {result.total_bytes / 2**20:.1f} MiB in "
        f"{len(weights)} file(s); at most {result.peak_bytes / 2**20:.1f} MiB of tensors held at once"
    )
    return 0


def _config(args) -> int:
    if args.fields:
        for name, default, doc in field_docs():
            print(f"{name} = {default}\n    {doc}")
        return 0
    print(load_config(args.preset, args.config, args.overrides).to_yaml(), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "presets":
            for name, fn in PRESETS.items():
                print(f"{name:30s} {(fn.__doc__ or '').strip().splitlines()[0] if fn.__doc__ else ''}")
            return 0
        handler = {
            "train": _train,
            "eval": _evaluate,
            "sft": _sft,
            "config": _config,
            "ablate": _ablate,
            "export": _export,
        }[args.command]
        return handler(args)
    except ConfigError as error:
        print(f"dapo: invalid config: {error}", file=sys.stderr)
        return 2
    except DapoError as error:  # bad input or state the user can fix: the message says what to change
        print(f"dapo: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
