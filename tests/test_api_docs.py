"""docs/api.md's reference part is what scripts/api_docs.py renders from the docstrings now."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "api_docs.py"


@pytest.fixture(scope="module")
def api_docs():
    spec = importlib.util.spec_from_file_location("api_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_in_docs_matches_the_docstrings(api_docs):
    text = api_docs.DOC.read_text(encoding="utf-8")
    assert api_docs.replace_reference(text, api_docs.render()) == text, "run: python scripts/api_docs.py"
    assert api_docs.main(["--check"]) == 0


def test_every_listed_object_is_rendered_with_its_docstring(api_docs):
    reference = api_docs.render()
    for _, paths in api_docs.REFERENCE:
        for path in paths:
            assert f"<sub>`{path}`</sub>" in reference
    assert "class SetLearningRate(BaseModel):\n    kind: Literal['set_lr'] = 'set_lr'" in reference
    assert "def propose(\n    phase: Phase | str,\n    window: Window," in reference
    assert "extra: dict[str, float] = {}" in reference  # EvalRecord's custom metrics
