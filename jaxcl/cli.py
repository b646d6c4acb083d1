"""The ``jaxcl`` command line: ``jaxcl generate``, ``jaxcl run``, ``jaxcl report``, ``jaxcl list``."""

from __future__ import annotations

import argparse
import sys


def _cmd_generate(args: argparse.Namespace) -> int:
    import jaxcl

    model = jaxcl.load_pretrained(args.model)
    print(model.generate(args.prompt, max_new_tokens=args.max_new_tokens, chat=not args.raw))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxcl", description="Continual learning of LLMs in JAX.")
    sub = parser.add_subparsers(dest="command")
    gen = sub.add_parser("generate", help="greedy answer of a model to a prompt")
    gen.add_argument("prompt", nargs="?", default="What is continual learning? Answer in one sentence.")
    gen.add_argument("--model", default="smollm2-135m", help="embedded name, HF folder or .gguf file")
    gen.add_argument("--max-new-tokens", type=int, default=48)
    gen.add_argument("--raw", action="store_true", help="no chat template")
    gen.set_defaults(func=_cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
