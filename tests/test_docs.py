"""The documentation cannot rot: the generated references match the code, the README stays short, and every
relative link in README.md and docs/ leads to a file of the repository."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference.py"
GENERATED = ("configuration.md", "records.md")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def reference(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REFERENCE), *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_the_generated_references_match_the_code():
    result = reference("--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_fails_on_a_stale_reference(tmp_path):
    for name in GENERATED:
        shutil.copy(DOCS / name, tmp_path / name)
    written = reference("--docs", str(tmp_path))
    assert written.returncode == 0, written.stdout + written.stderr
    assert reference("--check", "--docs", str(tmp_path)).returncode == 0
    stale = tmp_path / "records.md"
    lines = stale.read_text().splitlines(keepends=True)
    row = next(i for i, line in enumerate(lines) if line.startswith("| `synapses`"))
    lines[row] = lines[row].replace("|", "| edited by hand", 1)
    stale.write_text("".join(lines))
    result = reference("--check", "--docs", str(tmp_path))
    assert result.returncode == 1
    assert "records.md" in result.stderr and "configuration.md" not in result.stderr, result.stderr


def test_the_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move the details to docs/"


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def test_every_relative_link_leads_to_a_file():
    broken = []
    for page in _pages():
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:|#", target):  # a URL, or an anchor in the same page
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_the_readme_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in DOCS.glob("*.md") if f"(docs/{p.name}" not in readme]
    assert not missing, f"README.md links no docs page of: {missing}"
