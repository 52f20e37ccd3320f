"""docs/config.md is the schema's reference: generated from it, complete, and never stale."""
from __future__ import annotations

import json
from pathlib import Path

from distmeta.config import Config, FaultConfig, MixtureComponent
from distmeta.config.reference import keys, render

DOCS = Path(__file__).resolve().parent.parent / "docs" / "config.md"
REGENERATE = ".venv/bin/python -m distmeta.config.reference > docs/config.md"


def _documented() -> dict[str, object]:
    return {k.key: k for _, _, own in keys() for k in own}


def _leaves(node: dict, prefix: str = "") -> dict[str, object]:
    """Dotted leaf keys of a dumped config, the independent list of what must be documented."""
    out: dict[str, object] = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_docs_config_md_is_the_generated_reference():
    assert DOCS.exists(), f"docs/config.md is missing: run `{REGENERATE}`"
    assert DOCS.read_text() == render(), f"docs/config.md is stale (the schema changed): run `{REGENERATE}`"


def test_every_key_of_the_schema_is_documented_with_its_default():
    """Against Config().model_dump(): every leaf key is listed, and its default is the dumped value."""
    documented = _documented()
    dumped = _leaves(Config().model_dump(mode="json"))
    assert set(dumped) <= set(documented), f"keys missing from the reference: {sorted(set(dumped) - set(documented))}"
    for key, value in dumped.items():
        assert json.loads(documented[key].default) == value, key
    for section, model in (("faults[]", FaultConfig), ("data.mixture[]", MixtureComponent)):
        assert {f"{section}.{n}" for n in model.model_fields} <= set(documented), section


def test_every_key_has_a_description():
    missing = sorted(k for k, v in _documented().items() if not v.description.strip())
    assert not missing, f"add Field(description=...) in distmeta/config/ for: {missing}, then run `{REGENERATE}`"
