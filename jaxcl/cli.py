"""The ``jaxcl`` command line: ``run`` (default), ``report``, ``list``, ``generate``.

``jaxcl run`` with no flags trains the default method through the standard benchmark (order 1)
with the ``quick`` preset on the embedded SmolLM2-135M and the embedded data subset.
"""

from __future__ import annotations

import argparse
import sys


def _cmd_run(args: argparse.Namespace) -> int:
    from jaxcl.engine import RunConfig, run_experiment
    from jaxcl.engine.outputs import markdown_matrix
    from jaxcl.methods import parse_hyperparams

    config = RunConfig(
        method=args.method, benchmark=args.benchmark, order=args.order,
        tasks=tuple(args.tasks.split(",")) if args.tasks else None, model=args.model, data_dir=args.data_dir,
        preset=args.preset, max_train=args.max_train, max_test=args.max_test, max_length=args.max_length,
        batch_size=args.batch_size, epochs=args.epochs, learning_rate=args.lr, seed=args.seed,
        compute_dtype=args.dtype, with_task_prefix=not args.no_task_prefix,
        method_kwargs=tuple(sorted(parse_hyperparams(args.set).items())),
    )
    result = run_experiment(config, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    print(markdown_matrix(result.task_names, result.R, result.metrics["summary"], config.method))
    print(f"run directory: {result.run_dir}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from jaxcl.engine.outputs import report

    print(report(args.runs, args.out))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from jaxcl.data import BENCHMARKS
    from jaxcl.engine import PRESETS
    from jaxcl.methods import available_methods

    print("methods:")
    for name, desc in available_methods().items():
        print(f"  {name:16s} {desc}")
    print("benchmarks:")
    for b, orders in BENCHMARKS.items():
        for o, tasks in orders.items():
            print(f"  {b} --order {o}: {' -> '.join(tasks)}")
    print("presets:")
    for p, v in PRESETS.items():
        print(f"  {p}: {v}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    import jaxcl

    model = jaxcl.load_pretrained(args.model)
    print(model.generate(args.prompt, max_new_tokens=args.max_new_tokens, chat=not args.raw))
    return 0


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="olora", help="a method name (see `jaxcl list`)")
    p.add_argument("--benchmark", default="standard", help="standard (orders 1-3) or long (orders 4-6)")
    p.add_argument("--order", type=int, default=None, help="task order (default 1 for standard, 4 for long)")
    p.add_argument("--tasks", default=None, help="comma-separated task names instead of a benchmark order")
    p.add_argument("--model", default="smollm2-135m", help="embedded name, HF folder or .gguf file")
    p.add_argument("--data-dir", default=None, help="a CL_Benchmark folder (default: $JAXCL_DATA_DIR or the embedded subset)")
    p.add_argument("--preset", default="quick", help="quick (2-core CPU, ~15 min), quick-long (the 15-task orders on a CPU) or paper")
    p.add_argument("--out", default=None, help="run directory (default runs/<method>_<benchmark>...)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoints")
    p.add_argument("--overwrite", action="store_true", help="replace whatever --out holds")
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-test", type=int, default=None)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a method hyper-parameter (repeatable), e.g. --set lam1=0.1 --set rank_rule=\"'fixed'\"")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    p.add_argument("--no-task-prefix", action="store_true", help="drop the Task:/Dataset: lines (no task identity)")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxcl", description="Continual learning of LLMs in JAX.")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="train a CL method through a task stream (default command)")
    _add_run_args(run)
    run.set_defaults(func=_cmd_run)
    rep = sub.add_parser("report", help="compare finished runs")
    rep.add_argument("runs", nargs="+")
    rep.add_argument("--out", default=None, help="folder for report.md and comparison plots")
    rep.set_defaults(func=_cmd_report)
    lst = sub.add_parser("list", help="methods, benchmarks and presets")
    lst.set_defaults(func=_cmd_list)
    gen = sub.add_parser("generate", help="greedy answer of a model to a prompt")
    gen.add_argument("prompt", nargs="?", default="What is continual learning? Answer in one sentence.")
    gen.add_argument("--model", default="smollm2-135m", help="embedded name, HF folder or .gguf file")
    gen.add_argument("--max-new-tokens", type=int, default=48)
    gen.add_argument("--raw", action="store_true", help="no chat template")
    gen.set_defaults(func=_cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        argv = ["run", *argv]
    args = parser.parse_args(argv)
    if args.command == "run" and args.order is None:
        args.order = 4 if args.benchmark == "long" else 1
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError, RuntimeError) as e:
        print(f"jaxcl: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
