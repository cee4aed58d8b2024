"""The package's shape: every module sits on a layer and imports only from its own layer or
below, the import graph has no circle, and no module grows past 400 lines.

Layers, bottom up (docs: README's code map):
  0 facts: errors, names, geometry, fsutil, provenance, config and its rules, the safe torch reader
  1 adapters: experiment/ (MLflow), hub.py + hub_repo.py (Hugging Face Hub), epoch_ranking
  2 model/ and data/
  3 track/ (tracker, metrics, scoring, plots)
  4 train/ (loop, checkpoints, resume, validation, recorder, ...)
  5 run-level steps: training.py, track/evaluate.py + eval_data.py, publish/
  6 the command line: cli.py, __main__.py
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "seqtrack_mlflow"
MAX_LINES = 400

# Module-name prefix -> layer; the longest matching prefix wins.
LAYERS = {
    "errors": 0, "names": 0, "geometry": 0, "fsutil": 0, "provenance": 0, "lasot_classes": 0,
    "config_rules": 0, "presets": 0, "config": 0, "torchfile": 0,
    "experiment": 1, "hub": 1, "hub_repo": 1, "epoch_ranking": 1,
    "model": 2, "data": 2,
    "track": 3,
    "train": 4,
    "training": 5, "track.evaluate": 5, "track.eval_data": 5, "publish": 5,
    "cli": 6, "__main__": 6, "__init__": 6,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    keys = [k for k in LAYERS if module == k or module.startswith(k + ".")]
    assert keys, f"module {module} has no layer: add it to LAYERS"
    return LAYERS[max(keys, key=len)]


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports (at any depth of the file, lazy imports included)."""
    own = module_name(path)
    package = own.split(".") if path.name == "__init__.py" else own.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "seqtrack_mlflow":
                target = node.module.partition(".")[2]
            else:
                continue
            for alias in node.names:  # `from seqtrack_mlflow.train import loop` names a module
                child = f"{target}.{alias.name}" if target else alias.name
                found.add(child if child in modules else target)
        elif isinstance(node, ast.Import):
            found |= {a.name.partition(".")[2] for a in node.names if a.name.startswith("seqtrack_mlflow.")}
    return {m for m in found if m in modules and m != own}


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths} | {""}
    return {module_name(p): imports_of(p, modules) - {""} for p in paths}


def test_every_import_goes_to_the_same_layer_or_below():
    upward = [f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
              for m, deps in graph().items() for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert not upward, "imports running up a layer:\n" + "\n".join(upward)


def test_the_import_graph_has_no_circle():
    edges = graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                return path + [node, dep]
            if dep not in state and (cycle := visit(dep, path + [node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            cycle = visit(start, [])
            assert cycle is None, "import circle: " + " -> ".join(cycle[cycle.index(cycle[-1]):])


def test_no_module_is_over_400_lines():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checker_sees_a_violation():
    """The graph reader finds lazy imports inside functions and relative imports."""
    deps = graph()
    assert "publish.mirror" in deps["cli"]  # imported inside a command handler
    assert "train.loop" in deps["publish.publisher"]
    assert layer_of("track.evaluate") > layer_of("track.scoring") > layer_of("model.load")


def test_the_readme_code_map_names_every_module():
    readme = (PACKAGE.parents[1] / "README.md").read_text(encoding="utf-8")
    code_map = readme[readme.index("## Code map"):]
    missing = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if p.name != "__init__.py" and f"{p.name}`" not in code_map and f"{p.name}," not in code_map
               and f"{p.name})" not in code_map]
    assert not missing, f"README's code map does not name {missing}"
