"""The module boundaries of ARCHITECTURE.md, checked: the trainer never imports pipeline/; schemas/ imports nothing of ours."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def _imported_after(code: str) -> set[str]:
    probe = f"import sys; {code}; print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in ('pipeline', 'trainer', 'schemas'))))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True, timeout=300)
    return set(out.stdout.split())


def test_trainer_never_imports_the_pipeline():
    modules = _imported_after("import trainer.task, trainer.serve, trainer.vertex, trainer.export, trainer.data, trainer.model")
    assert "trainer.task" in modules
    assert not {m for m in modules if m.split(".")[0] == "pipeline"}


def test_schemas_import_nothing_of_ours():
    modules = _imported_after("import schemas.flights, schemas.taxi")
    assert {m.split(".")[0] for m in modules} == {"schemas"}
