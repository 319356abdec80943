"""The layers show in the code: what a dictionary is (features/*.py) never imports chat or the
pipeline; chat imports the pipeline only in its benchmark of dictionary learning."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_runtime_side_imports_neither_chat_nor_the_pipeline():
    runtime = [p for p in (ROOT / "features").glob("*.py") if p.name != "__main__.py"]  # the CLI launcher
    assert len(runtime) >= 8
    for path in runtime:
        bad = {m for m in _imports(path) if m.split(".")[0] == "chat" or m.startswith("features.pipeline")}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_chat_uses_the_pipeline_only_to_benchmark_it():
    users = {p.name for p in (ROOT / "chat").rglob("*.py") if any(m.startswith("features.pipeline") for m in _imports(p))}
    assert users == {"bench.py"}
