"""The package's shape, read from its source with ast: no class over 150 lines, no function over
60, and every `ffbench.*` tag name is written in ffbench/tags.py only, the others importing it
from there."""

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


MAX_CLASS_LINES = 150  # issue 23: a class a newcomer can read at one sitting
MAX_FUNCTION_LINES = 60  # a function, docstring included, on one screen


def spans(tree: ast.Module, kinds: tuple) -> list[tuple[int, str]]:
    """(lines, name) of every node of `kinds`, methods and nested functions included."""
    return [
        (node.end_lineno - node.lineno + 1, node.name)
        for node in ast.walk(tree)
        if isinstance(node, kinds)
    ]


def too_long(kinds: tuple, limit: int) -> list[str]:
    return [
        f"ffbench/{name}: {what} has {lines} lines"
        for name, tree in sources().items()
        for lines, what in spans(tree, kinds)
        if lines > limit
    ]


def test_no_class_over_150_lines_and_no_function_over_60():
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    assert too_long((ast.ClassDef,), MAX_CLASS_LINES) == []
    assert too_long(functions, MAX_FUNCTION_LINES) == []


def test_the_length_check_counts_decorators_out_and_docstrings_in():
    tree = ast.parse('@cache\ndef f():\n    """Two\n    lines."""\n    return 1\n')
    assert spans(tree, (ast.FunctionDef,)) == [(4, "f")]
