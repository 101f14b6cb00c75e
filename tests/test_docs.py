"""The repository's documents link only to what a clone has (issue 31.3: README linked
`../shared/SPEC.md`, a file outside the repository)."""

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")), "bench/RESULTS.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_relative_link_names_a_file_inside_the_repository(document):
    path = REPO / document
    for target in LINK.findall(path.read_text()):
        if urlsplit(target).scheme or target.startswith("#"):
            continue  # a web address or an anchor in the same page
        resolved = (path.parent / unquote(target.split("#")[0])).resolve()
        assert resolved.is_relative_to(REPO), f"{document} links {target}, outside the repository"
        assert resolved.exists(), f"{document} links {target}, which does not exist"


def test_the_readme_points_to_the_method_document():
    assert "[`docs/method.md`](docs/method.md)" in (REPO / "README.md").read_text()
    assert "../shared" not in (REPO / "README.md").read_text()
