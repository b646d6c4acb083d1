"""Copy committed result files into README.md, so every table there is a file a script wrote.

README.md marks each copied block::

    <!-- include: experiments/results/bench_methods.md -->
    ...contents of that file, replaced on every run...
    <!-- end include -->

    python experiments/update_readme.py [--check]

Markdown headings of an included file are nested two levels deeper (``# T`` → ``### T``), under the
README section that includes it. ``--check`` changes nothing and exits 1 when a block differs from its file (tests run it).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- include: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- end include -->)", re.S)


def render(readme: str) -> str:
    """README text with each include block's body replaced by its file's contents."""

    def fill(m: re.Match) -> str:
        path = ROOT / m.group("path")
        if not path.is_file():
            raise FileNotFoundError(f"README includes {m.group('path')}, which does not exist")
        body = re.sub(r"^(#+) ", r"##\1 ", path.read_text(), flags=re.M)
        return m.group(1) + body + ("" if body.endswith("\n") else "\n") + m.group(4)

    return BLOCK.sub(fill, readme)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    readme = ROOT / "README.md"
    old = readme.read_text()
    new = render(old)
    if args.check:
        stale = [m.group("path") for m in BLOCK.finditer(old) if m.group(0) not in new]
        if stale:
            print("README blocks differ from their files: " + ", ".join(stale), file=sys.stderr)
            return 1
        return 0
    if new != old:
        readme.write_text(new)
        print("README.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
