"""The code's layout keeps its promises: small modules and classes, nothing written twice."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted((ROOT / "spawner").rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 300


def _is_trait_declaration(node: ast.stmt) -> bool:
    """``name = Trait(...).tag(config=True)``: configuration, documented by its help text."""
    if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Call):
        return False
    func = node.value.func
    return isinstance(func, ast.Attribute) and func.attr == "tag" and any(
        kw.arg == "config" for kw in node.value.keywords
    )


def _trait_lines(tree: ast.Module) -> set[int]:
    return {
        line
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for stmt in node.body
        if _is_trait_declaration(stmt)
        for line in range(stmt.lineno, stmt.end_lineno + 1)
    }


def _budget(path: Path) -> tuple[int, dict[str, int]]:
    """(lines of the module, lines of each class), trait declarations not counted."""
    tree = ast.parse(path.read_text())
    traits = _trait_lines(tree)
    total = len(path.read_text().splitlines()) - len(traits)
    classes = {
        node.name: (node.end_lineno - node.lineno + 1)
        - len([n for n in traits if node.lineno <= n <= node.end_lineno])
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    }
    return total, classes


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(ROOT)) for p in MODULES])
def test_no_module_over_400_lines_and_no_class_over_300(path):
    total, classes = _budget(path)
    assert total <= MAX_MODULE_LINES, f"{path.name}: {total} lines without the trait declarations"
    for name, lines in classes.items():
        assert lines <= MAX_CLASS_LINES, f"{path.name}: class {name} has {lines} lines"


def test_the_budget_sees_a_long_class(tmp_path):
    body = "\n".join(f"    def m{i}(self):\n        return {i}" for i in range(160))
    path = tmp_path / "big.py"
    path.write_text(f"class Big:\n{body}\n")
    assert _budget(path)[1]["Big"] > MAX_CLASS_LINES


def _import_lines(path: Path) -> set[int]:
    if path.suffix != ".py":
        return set()
    return {
        line
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for line in range(node.lineno, node.end_lineno + 1)
    }


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of lines that carry code: no blank, comment or import lines."""
    lines = []
    imports = _import_lines(path)
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if number in imports:
            continue
        text = re.sub(r"\s+", " ", line.strip())
        if text and not text.startswith("#") and text not in ("}", ")", "]", "fi", "done", "esac", ";;"):
            lines.append((number, text))
    return lines


def _repeats(paths: list[Path], root: Path, run: int = 6) -> list[str]:
    """Each run of *run* code lines that stands a second time (the same text, spaces folded)."""
    seen: dict[tuple[str, ...], str] = {}
    found = []
    for path in paths:
        lines = _code_lines(path)
        for i in range(len(lines) - run + 1):
            key = tuple(text for _, text in lines[i : i + run])
            where = f"{path.relative_to(root)}:{lines[i][0]}"
            if key in seen:
                found.append(f"{where} repeats {seen[key]}")
            seen.setdefault(key, where)
    return found


@pytest.mark.parametrize("folder, pattern", [("spawner", "*.py"), ("scripts", "*.sh")])
def test_no_run_of_six_code_lines_is_written_twice(folder, pattern):
    assert _repeats(sorted((ROOT / folder).rglob(pattern)), ROOT) == []


def test_the_repeat_check_finds_a_copy(tmp_path):
    text = "\n".join(f"x{i} = {i}" for i in range(6)) + "\n"
    (tmp_path / "a.py").write_text(text)
    (tmp_path / "b.py").write_text("# other\n" + text)
    assert len(_repeats([tmp_path / "a.py", tmp_path / "b.py"], tmp_path)) == 1
