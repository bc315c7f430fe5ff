"""What users expect of a release: `focuslab --version`, a changelog with an Unreleased section, and
a CITATION.cff that cites the paper focuslab reproduces and focuslab at its version."""
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import focuslab
from focuslab.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def test_version_flag_prints_the_package_version():
    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0
    assert res.output.strip() == f"focuslab, version {focuslab.__version__}"


def test_the_changelog_has_an_unreleased_section_naming_this_releases_commands():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## Unreleased" in text
    unreleased = text.split("## Unreleased", 1)[1].split("\n## ", 1)[0]
    assert "focuslab bridge" in unreleased and "validation/" in unreleased


def test_citation_cff_cites_the_paper_and_focuslab_at_its_version():
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with the docs extra (mkdocs)")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert str(cff["version"]) == focuslab.__version__
    assert {"title", "authors", "message", "license"} <= set(cff)
    paper = cff["preferred-citation"]
    assert paper["title"] == "FOCUS: First Order Concentrated Updating Scheme" and paper["year"] == 2025
    assert [a["family-names"] for a in paper["authors"]] == ["Liu", "Liu", "Gore"]
    assert any(re.fullmatch(r"arXiv:2501\.12243", i["value"]) for i in paper["identifiers"])
