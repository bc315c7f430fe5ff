"""The documentation site builds with `mkdocs build --strict` (every page in the nav, every link and
anchor resolving, the API pages generated from docstrings, every command page's --help generated),
no page is longer than ~400 lines, and every table a page includes says which script wrote it."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MISSING = [m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "pymdownx")
           if importlib.util.find_spec(m.split(".")[0]) is None
           or (m == "mkdocstrings_handlers.python" and importlib.util.find_spec(m) is None)]
needs_docs = pytest.mark.skipif(bool(MISSING), reason=f"the docs extra is not installed (no {', '.join(MISSING)}): "
                                                      "pip install -e '.[docs]'")


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "tables" not in p.relative_to(DOCS).parts)


def _nav_files(nav) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += _nav_files(value) if isinstance(value, list) else [value]
    return out


def test_every_page_is_in_the_nav_and_none_is_over_400_lines():
    text = (ROOT / "mkdocs.yml").read_text()
    nav = re.findall(r":\s*([\w./-]+\.md)\s*$", text.split("\nnav:", 1)[1], flags=re.M)
    pages = [str(p.relative_to(DOCS)) for p in _pages()]
    assert sorted(nav) == sorted(pages), set(nav) ^ set(pages)
    for page in _pages():
        n = len(page.read_text().splitlines())
        assert n <= 400, f"{page.relative_to(ROOT)}: {n} lines"


def test_every_included_table_names_the_script_that_wrote_it_or_where_it_was_carried_from():
    included = set()
    for page in _pages():
        included |= set(re.findall(r'^--8<-- "docs/tables/([\w.-]+)"', page.read_text(), flags=re.M))
    assert included, "no page includes a generated table"
    for name in sorted(included):
        head = (DOCS / "tables" / name).read_text().splitlines()[0]
        assert re.match(r"<!-- (written by `python (-m focuslab\.report|benchmarks/[\w.]+)|carried over from "
                        r"README\.md at commit [0-9a-f]{7})", head) or head.startswith("<!-- written by `"), \
            f"docs/tables/{name}: {head}"


@needs_docs
@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    site = tmp_path / "site"
    for page in _pages():
        rel = page.relative_to(DOCS).with_suffix("")
        built = site / ("index.html" if rel.name == "index" else rel / "index.html")
        assert built.exists(), built
    bridge = " ".join((site / "commands" / "bridge" / "index.html").read_text().split())
    assert "--stability-replicates" in bridge and "[default: 20]" in bridge  # the --help, generated
    api = (site / "api" / "diagnostics" / "index.html").read_text()
    assert "focuslab.diagnostics.measure" in api and "hessian_iters" in api and "All diagnostics at the current" in api
