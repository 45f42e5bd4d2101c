"""Option names stay in their registries: what varies with an option is said by its entry
(docs/extending.md), so no module compares a config value with a registry's option names
outside the module that holds that registry, and adding an option needs no edit elsewhere."""

import ast
import importlib
from pathlib import Path

from ffbench import activations
from ffbench.config import Registry, allowed, schema_keys, written_keys

PACKAGE = Path(__file__).resolve().parents[2] / "ffbench"


def _registries() -> dict[str, tuple[str, set]]:
    """dotted key -> (the file of its registry, its option names)."""
    found = {}
    for dotted, f in schema_keys():
        choices = f.metadata["choices"]
        if isinstance(choices, Registry):
            names = set(choices) - set(choices.first)  # `first` ("none") is the schema's own
            found[dotted] = (f"{choices.module}.py", names)
    return found


def _strings(node) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for element in node.elts for s in _strings(element)]
    return []


def _leaf(node) -> str | None:
    """The last name of the compared expression: `cfg.algo.loss` -> loss, `choices["algo"]`
    -> algo, `activation` -> activation."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Subscript):
        return _strings(node.slice)[0] if _strings(node.slice) else None
    return None


def _keys_named(leaf: str, registries: dict) -> list[str]:
    """The registry keys a variable of this name may hold: `loss` -> algo.loss, `algo` ->
    algo.name (a group's name), `name` -> every group's."""
    return [k for k in registries if leaf in (k.split(".")[-1], k.split(".")[0])]


def comparisons_outside_registries(source: str, module: str, registries: dict) -> list[str]:
    """`x == "name"`, `x != "name"`, `x in ("name", ...)` with a registry's option name, in
    `module` when the registry is elsewhere. "none" names no option in several keys, so it
    counts only where the compared variable names a key whose registry holds it."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for index, operand in enumerate(operands):
            others = operands[:index] + operands[index + 1 :]
            for name in _strings(operand):
                for key, (home, names) in registries.items():
                    if name not in names or home == module:
                        continue
                    leaves = [_leaf(o) for o in others]
                    if name == "none" and not any(
                        key in _keys_named(leaf, registries) for leaf in leaves if leaf
                    ):
                        continue
                    found.append(f"{module}:{node.lineno}: {name!r} ({key})")
    return sorted(set(found))


def test_no_module_compares_a_config_value_with_another_registrys_option_names():
    registries = _registries()
    found = [
        hit
        for path in sorted(PACKAGE.glob("*.py"))
        for hit in comparisons_outside_registries(path.read_text(), path.name, registries)
    ]
    assert found == []


def test_the_check_finds_the_comparisons_it_forbids():
    registries = _registries()
    source = (
        'if cfg.algo.loss == "cwc": pass\n'
        'if m.name != "mlp": pass\n'
        'if algo in ("ff", "bp"): pass\n'
        'if a.negatives == "none": pass\n'
        'if device.type == "cuda" or m.blackbox == "none": pass\n'
    )
    found = comparisons_outside_registries(source, "elsewhere.py", registries)
    assert [hit.split(":")[1] for hit in found] == ["1", "2", "3", "3", "4"]
    assert comparisons_outside_registries(source, "goodness.py", registries)[0].startswith(
        "goodness.py:2: 'mlp'"
    )


def test_the_names_read_from_a_registrys_source_are_its_keys():
    """The schema reads a registry's names from its module's source while the module is not
    imported (config.written_keys: no torch): they are the imported dict's keys, in order."""
    for dotted, f in schema_keys():
        choices = f.metadata["choices"]
        if isinstance(choices, Registry):
            registry = getattr(importlib.import_module(f"ffbench.{choices.module}"), choices.name)
            assert written_keys(choices.module, choices.name) == tuple(registry), dotted


def test_an_entry_added_at_run_time_is_an_allowed_value(monkeypatch):
    monkeypatch.setitem(activations.ACTIVATIONS, "toy", activations.ACTIVATIONS["relu"])
    assert "toy" in allowed(dict(schema_keys())["activation.name"])
