"""docs/hyperparameters.md is generated from the config (birdsed.config_doc) and must stay so."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from birdsed import config, config_doc

DOC = Path(__file__).resolve().parents[1] / "docs" / "hyperparameters.md"


def test_every_hyperparameter_has_help():
    missing = [
        name for name, (_, item, _) in config.HYPERPARAMETERS.items() if not item.metadata.get("help", "").strip()
    ]
    assert not missing, f"hyperparameters without help=... in birdsed/config.py: {', '.join(missing)}"


def test_docs_match_the_config():
    expected = config_doc.render()
    assert DOC.is_file() and DOC.read_text(encoding="utf-8") == expected, (
        "docs/hyperparameters.md is out of date: run `make docs`"
    )


def test_every_section_and_hyperparameter_is_in_the_docs():
    text = config_doc.render()
    assert set(config_doc.SECTIONS) == {section.name for section in dataclasses.fields(config.Config)}
    for name, (_, item, _) in config.HYPERPARAMETERS.items():
        assert f"| `{name}` |" in text
        assert item.metadata["help"].strip() in text


def test_a_field_without_help_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Section:
        undocumented: float = dataclasses.field(default=1.0, metadata=config._range(0.0, 2.0))

    (item,) = dataclasses.fields(Section)
    with pytest.raises(ValueError, match="'undocumented' has no help"):
        config_doc._row(item, float)


def test_rows_show_choices_defaults_and_ranges():
    text = config_doc.render()
    assert "| `pretrained` | one of `auto`, `true`, `false` | `auto` |  |" in text
    assert "| `lr` | number | `0.001` | > 0, <= 10 |" in text
    assert "| `export_onnx` | bool | `true` |  |" in text


def test_main_writes_atomically_and_checks(tmp_path, capsys):
    target = tmp_path / "docs" / "hyperparameters.md"
    assert config_doc.main(["--output", str(target), "--check"]) == 1
    assert "run `make docs`" in capsys.readouterr().err
    assert config_doc.main(["--output", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == config_doc.render()
    assert [path.name for path in target.parent.iterdir()] == ["hyperparameters.md"]
    assert config_doc.main(["--output", str(target), "--check"]) == 0
    target.write_text("stale", encoding="utf-8")
    assert config_doc.main(["--output", str(target), "--check"]) == 1
