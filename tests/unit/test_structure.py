"""The package's shape, read from its source with ast: every `ffbench.*` tag name is written in
ffbench/tags.py only, and the others import it from there."""

import ast
import importlib.util
import re
from pathlib import Path

import ffbench
from ffbench import tags

PACKAGE = Path(ffbench.__file__).parent
TAG = re.compile(r"ffbench\.[a-z_]+")


def sources() -> dict[str, ast.Module]:
    return {path.name: ast.parse(path.read_text()) for path in sorted(PACKAGE.glob("*.py"))}


def docstrings(tree: ast.Module) -> set[int]:
    """The ids of the docstrings' nodes: prose may name a tag."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def tag_literals(tree: ast.Module) -> list[str]:
    """The tag names written as strings (not module names such as ffbench.conf), docstrings
    aside."""
    prose = docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            for name in TAG.findall(node.value):
                if importlib.util.find_spec(name) is None:
                    found.append(f"{node.lineno}: {name}")
    return found


def tag_names() -> list[str]:
    return [value for name, value in vars(tags).items() if name.isupper()]


def test_tag_names_are_written_in_tags_py_only():
    written = {name: tag_literals(tree) for name, tree in sources().items()}
    assert len(written.pop("tags.py")) == len(tag_names())  # the check finds them
    assert {name: found for name, found in written.items() if found} == {}


def test_tag_names_are_distinct_and_namespaced():
    names = tag_names()
    assert len(set(names)) == len(names)
    assert all(TAG.fullmatch(name) for name in names)
