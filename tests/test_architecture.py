"""The module rules of ARCHITECTURE.md, checked: the trainer imports only pipeline's Beam-free core; schemas/ imports
nothing of ours; no import cycles; our modules import each other at the top, and no code of ours
reaches for a private name of Beam, tensorflow-transform, tfx-bsl or TensorFlow."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import REPO

PACKAGES = ("pipeline", "trainer", "schemas")
LIBRARIES = ("apache_beam", "tensorflow_transform", "tfx_bsl", "tensorflow", "tf_keras", "tensorflow_metadata")
# Modules of ours that import TensorFlow at their top, imported inside a function where TensorFlow is needed
# (a graph is built, a SavedModel read), so that the rest imports without it.
HEAVY = {"pipeline.datasets.features", "trainer.export"}


def _imported_after(code: str) -> set[str]:
    probe = f"import sys; {code}; print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in ('pipeline', 'trainer', 'schemas'))))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True, timeout=300)
    return set(out.stdout.split())


def _modules() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = ast.parse(path.read_text(), str(path))
    return found


def _imports(tree: ast.Module, ours: set[str]):
    """(module imported, at top level?) for each import of one of ``ours`` in ``tree``."""
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in ours else node.module for a in node.names]
        else:
            continue
        for name in names:
            if name in ours:
                yield name, id(node) in top


BEAM_FREE_CORE = ("pipeline.records", "pipeline.datasets", "pipeline.online")  # what the trainer and server may use


def test_the_trainer_uses_only_the_beam_free_core_of_the_pipeline():
    """The server fills windowed features with the pipeline's own layouts, events and window code, and
    never needs Beam for it: the trainer imports only pipeline's Beam-free core, and Beam is not loaded."""
    code = "import trainer.task, trainer.serve, trainer.vertex, trainer.export, trainer.data, trainer.model"
    modules = _imported_after(code)
    assert "trainer.task" in modules and "pipeline.online.windows" in modules
    outside = {m for m in modules if m.split(".")[0] == "pipeline" and m != "pipeline"
               and not m.startswith(BEAM_FREE_CORE)}
    assert outside == set()
    assert "pipeline.datasets.features" not in modules  # TensorFlow helpers of the preprocessing_fn
    probe = f"import sys; {code}; print('apache_beam' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "False"


def test_schemas_import_nothing_of_ours():
    modules = _imported_after("import schemas.flights, schemas.taxi")
    assert {m.split(".")[0] for m in modules} == {"schemas"}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_and_our_modules_are_imported_at_the_top():
    modules = _modules()
    ours = set(modules)
    graph = {name: {m for m, _ in _imports(tree, ours) if m != name} for name, tree in modules.items()}
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check finds one
    inside = sorted(f"{name} imports {m} inside a function" for name, tree in modules.items()
                    for m, at_top in _imports(tree, ours) if not at_top and m not in HEAVY and m != name.split(".")[0])
    assert inside == []


def test_the_pipeline_folders_depend_in_one_direction():
    """records/ (the model) imports no stage or dataset; stages/ import no dataset (a dataset plugs its
    layouts, rules and features into the stages, through the registry in pipeline.preprocess); the
    Beam-free core (records/, datasets/, online/) imports no stage."""
    modules = _modules()
    ours = set(modules)
    assert {"pipeline.records.model", "pipeline.stages.window", "pipeline.datasets.flights"} <= ours  # subpackages read
    wrong = sorted(f"{name} imports {m}" for name, tree in modules.items() for m, _ in _imports(tree, ours)
                   if (name.startswith("pipeline.records") and m.startswith(("pipeline.stages", "pipeline.datasets")))
                   or (name.startswith("pipeline.stages") and m.startswith("pipeline.datasets"))
                   or (name.startswith(BEAM_FREE_CORE) and m.startswith(("pipeline.stages", "pipeline.preprocess"))))
    assert wrong == []


def _private_uses(tree: ast.Module) -> list[str]:
    """Names starting with one underscore taken from a library module or object imported from one."""
    aliases = {}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in LIBRARIES:
                    aliases[(a.asname or a.name).split(".")[0]] = a.name
                    found += [f"import {a.name}" for part in a.name.split(".") if part.startswith("_")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
            private = [p for p in node.module.split(".") if p.startswith("_")]
            private += [a.name for a in node.names if a.name.startswith("_")]
            found += [f"from {node.module} import {p}" for p in private]
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in aliases:
                found.append(f"{ast.unparse(node)} (line {node.lineno})")
    return found


def test_no_private_name_of_beam_tft_tfx_bsl_or_tensorflow_is_used():
    found = {name: uses for name, tree in _modules().items() if (uses := _private_uses(tree))}
    assert found == {}
    probe = ast.parse("import apache_beam as beam\nfrom apache_beam.io import tfrecordio\n"
                      "from tensorflow_transform.beam import _private\nx = tfrecordio._default_crc32c_fn\n"
                      "y = beam.io.filesystem._helper\nz = beam.Pipeline()\n")
    assert len(_private_uses(probe)) == 3  # the check finds what it looks for
