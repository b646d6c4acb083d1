"""The README's result tables are copies of committed result files (experiments/update_readme.py)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _update_readme():
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "experiments" / "update_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_equal_their_result_files():
    readme = (ROOT / "README.md").read_text()
    tool = _update_readme()
    blocks = list(tool.BLOCK.finditer(readme))
    assert blocks, "README.md has no include blocks"
    assert tool.render(readme) == readme, "README tables differ from their files: run python experiments/update_readme.py"


def test_render_replaces_a_stale_block(tmp_path):
    tool = _update_readme()
    path = "experiments/results/bench_model.md"
    stale = f"text\n<!-- include: {path} -->\nold numbers\n<!-- end include -->\nmore\n"
    fresh = tool.render(stale)
    assert "old numbers" not in fresh and (ROOT / path).read_text() in fresh and fresh.endswith("more\n")
