"""The release's metadata and docs as a package index shows them: the licence the
metadata declares and the file that holds it, Project-URLs, README links that work off
the repository, docs that point only inside it, the changelog, the ignored demo output.
(The wheel and sdist themselves are built, checked by twine and installed in CI.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LINK = re.compile(r"\]\(([^)\s]+)\)")
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_the_licence_file_is_the_licence_the_metadata_declares():
    assert PROJECT["license"] == "Apache-2.0"  # an SPDX expression, as setuptools >= 77 wants
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the whole text, not a pointer to it
    # setuptools refuses a licence classifier beside an SPDX expression
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")]


def test_project_urls_point_at_the_repository():
    urls = PROJECT["urls"]
    repo = urls["Repository"]
    assert repo.startswith("https://")
    for key in ("Homepage", "Documentation", "Changelog", "Issues"):
        assert urls[key].startswith(repo)


def _in_repo(url: str, repo: str) -> Path | None:
    """The repository file an absolute link to the main branch points at."""
    for kind in ("/blob/main/", "/tree/main/"):
        if url.startswith(repo + kind):
            return ROOT / url[len(repo + kind) :].split("#")[0]
    return None


def test_readme_links_work_on_a_package_index():
    repo = PROJECT["urls"]["Repository"]
    links = LINK.findall((ROOT / "README.md").read_text())
    assert links
    for url in links:
        assert url.startswith(("https://", "http://")), f"README link {url} is relative"
        target = _in_repo(url, repo)
        if url.startswith(repo):
            assert target is not None and target.exists(), f"README link {url}: no such file"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_point_only_inside_the_repository(path):
    text = path.read_text()
    assert "../shared" not in text and "/work/" not in text
    for url in LINK.findall(text):
        if url.startswith(("https://", "http://", "mailto:", "#")):
            continue
        target = (path.parent / url.split("#")[0]).resolve()
        assert target.exists(), f"{path.name}: link {url} points at nothing"
        assert target.is_relative_to(ROOT), f"{path.name}: link {url} leaves the repository"


def test_no_docstring_cites_a_spec_outside_the_repository():
    for path in sorted((ROOT / "flowenedet").rglob("*.py")):
        assert "../shared" not in path.read_text(), path


def test_the_changelog_has_the_version_and_an_unreleased_section():
    text = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[0] == "Unreleased"
    assert any(h.startswith(PROJECT["version"]) for h in headings)


def test_demo_and_bench_output_is_not_committed():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "flowenedet-demo/" in ignored and "flowenedet-bench/" in ignored


def test_the_dev_extra_builds_and_checks_the_release():
    names = {re.split(r"[<>=!~ \[]", dep)[0] for dep in PROJECT["optional-dependencies"]["dev"]}
    assert {"build", "twine"} <= names


def test_the_test_extra_installs_every_package_a_test_imports_or_skips():
    """A test that `importorskip`s a package outside the extras CI installs is silently
    skipped there (the model-family tests were)."""
    names = {
        "segmentation_models_pytorch": "segmentation-models-pytorch",
        "pytorch_ood": "pytorch-ood",
        "sklearn": "scikit-learn",
        "skimage": "scikit-image",
        "imagecorruptions": "imagecorruptions-imaug",
    }
    installed = {"torch", "torchvision", "timm", "nflows", "numpy", "scipy", "tomllib"}
    extras = PROJECT["optional-dependencies"]
    ci = re.search(r'install -q -e "\.\[([\w,]+)\]"', (ROOT / ".ci" / "run").read_text())
    assert ci, ".ci/run installs the package with its extras"
    specs = [spec for extra in ci.group(1).split(",") for spec in extras[extra]]
    listed = {
        re.split(r"[<>=\[ ;]", spec, maxsplit=1)[0].lower()
        for spec in [*specs, *PROJECT["dependencies"]]
    }
    skipped = set()
    for test in (ROOT / "tests").glob("test_*.py"):
        skipped |= set(re.findall(r"importorskip\(\s*\"([\w.]+)\"", test.read_text()))
    missing = {
        names.get(module.partition(".")[0], module.partition(".")[0])
        for module in skipped
        if module.partition(".")[0] not in installed
    } - listed
    assert not missing, f"tests import {sorted(missing)}, which no extra CI installs lists"
