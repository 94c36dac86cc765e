"""The documentation: the README stays a front page whose links resolve, and the mkdocs site
(``mkdocs.yml``, ``docs/``) builds in strict mode, offline, failing on a broken link or anchor."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MKDOCS = Path(sys.executable).parent / "mkdocs"

#: markdown links and images: [text](target) / ![alt](target), the target up to a space or ")"
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")

#: pages of the site that must exist after a build (use_directory_urls: page.md -> page/index.html)
KEY_PAGES = [
    "index.html", "getting_started/index.html", "concepts/index.html", "task_kinds/index.html",
    "growth/index.html", "strategies/index.html", "evaluation/index.html", "reliability/index.html",
    "clinical_data/index.html", "foundation_models/index.html", "pretraining/index.html",
    "patient_data/index.html", "bad_inputs/index.html", "benchmarks/index.html",
    "benchmark_summary/index.html", "extending/index.html", "adding_a_modality/index.html",
    "api/index.html",
    *(f"api/{package}/index.html" for package in (
        "framework.core", "framework.heads", "framework.paradigms", "framework.callbacks", "framework.replay",
        "framework.metrics", "framework.adapters", "framework.backbone", "data_modules")),
    "figures/mixed_kinds_accuracy_matrix.png", "figures/benchmarks/strategies.png",
    "examples/chest_xray/xray_data.py",
]


def _code_free(markdown: str) -> str:
    """The markdown without fenced code blocks and inline code (links inside them are not links)."""
    markdown = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", markdown)


def relative_links(markdown: str) -> list:
    """Every relative link target of a markdown text (no scheme, not a pure #anchor, not mailto)."""
    out = []
    for target in LINK.findall(_code_free(markdown)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue
        out.append(target)
    return out


def _heading_slugs(markdown: str) -> set:
    """GitHub's anchors for the headings of a markdown file (lower case, punctuation dropped, spaces -> -)."""
    slugs = set()
    for line in _code_free_keep_headings(markdown):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).lower())
            slugs.add(text.replace(" ", "-"))
    return slugs


def _code_free_keep_headings(markdown: str) -> list:
    return re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M).splitlines()


def test_link_extraction_sees_links_and_skips_code():
    text = "see [a](docs/a.md), ![img](docs/f.png \"t\") and [b](https://x.org) [c](#here)\n`[d](no.md)`\n```\n[e](no2.md)\n```\n"
    assert relative_links(text) == ["docs/a.md", "docs/f.png"]
    assert _heading_slugs("## The paradigm study\n### Several processes: DDP\n") == {"the-paradigm-study", "several-processes-ddp"}


def test_readme_is_a_front_page():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) < 300, f"README.md has {len(lines)} lines; move detail into docs/ (a front page is about 250)"
    # the two set-up commands stay at the very top, as they are (CI runs the README's test command: make test)
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines()[0].startswith("make demo   # ")
    assert first_block.splitlines()[1].startswith("make test   # ")
    assert text.index("```bash") < text.index("\n## "), "the set-up commands must come before the first section"
    assert "make docs" in text, "the README's links section names the docs target"


def test_every_relative_link_in_the_readme_resolves():
    text = README.read_text()
    targets = relative_links(text)
    assert len(targets) >= 20, targets  # the front page links into the docs
    broken = []
    for target in targets:
        path, _, anchor = unquote(target).partition("#")
        file = (REPO / path).resolve()
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _heading_slugs(file.read_text()):
            broken.append(target)
    assert not broken, f"README.md links to missing files or anchors: {broken}"


def test_every_relative_link_in_the_docs_resolves_on_github_too():
    """The pages are read on GitHub as well as in the site: each relative link names an existing file
    (relative to its page) and each anchor a heading of that file, by GitHub's anchor rule."""
    pages = sorted((REPO / "docs").rglob("*.md"))
    assert len(pages) >= 20
    broken = []
    for page in pages:
        for target in relative_links(page.read_text()):
            path, _, anchor = unquote(target).partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in _heading_slugs(file.read_text()):
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, f"broken relative links in docs/: {broken}"


def test_benchmark_report_shows_the_site_copies_of_the_plots(monkeypatch):
    """benchmarks/report.py writes docs/benchmarks.md with its plots linked from docs/figures/benchmarks/,
    and the copies there are the current plots of benchmarks/results/ (the site cannot show files
    outside docs/)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import report

    assert report._relink("![curve](medmnist_baselines_curve.png)") == "![curve](figures/benchmarks/medmnist_baselines_curve.png)"
    assert report._relink("see [raw](extra/x.md)") == "see [raw](../benchmarks/results/extra/x.md)"
    assert report._relink("[site](https://example.org/a.png)") == "[site](https://example.org/a.png)"
    text = report.document({})
    images = [t for t in relative_links(text) if t.endswith(".png")]
    assert images and all(t.startswith("figures/benchmarks/") for t in images), images
    stale = [png.name for png in sorted(report.RESULTS.glob("*.png"))
             if not (report.FIGURES / png.name).is_file() or (report.FIGURES / png.name).read_bytes() != png.read_bytes()]
    assert not stale, f"docs/figures/benchmarks/ is out of date for {stale}: run python benchmarks/report.py"


def _build(config_dir: Path, site: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(config_dir))
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(proxy, None)
    return subprocess.run([str(MKDOCS), "build", "--strict", "--site-dir", str(site)], cwd=config_dir, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_docs_site_builds_strict(tmp_path):
    assert MKDOCS.exists(), f"{MKDOCS} missing: pip install -e '.[dev]' installs mkdocs-material and mkdocstrings"
    done = _build(REPO, tmp_path / "site")
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    missing = [page for page in KEY_PAGES if not (tmp_path / "site" / page).is_file()]
    assert not missing, f"pages missing from the built site: {missing}"
    # the API pages are rendered from docstrings, not left as ::: directives
    heads = (tmp_path / "site" / "api" / "framework.heads" / "index.html").read_text()
    assert "register_head" in heads and "ClassificationHead" in heads and ":::" not in heads
    core = (tmp_path / "site" / "api" / "framework.core" / "index.html").read_text()
    assert "TaskSpec" in core


@pytest.mark.slow
def test_docs_site_fails_on_a_broken_link_or_anchor(tmp_path):
    """The strict build is a real check: a copy of the site with one broken link, then one broken anchor, fails."""
    for name, broken in (("link", "[gone](no_such_page.md)"), ("anchor", "[gone](strategies.md#no-such-heading)")):
        copy = tmp_path / name
        copy.mkdir()
        shutil.copy(REPO / "mkdocs.yml", copy / "mkdocs.yml")
        shutil.copytree(REPO / "docs", copy / "docs", ignore=shutil.ignore_patterns("__pycache__"))
        for package in ("framework", "data_modules"):  # mkdocstrings reads the sources (paths: [.])
            (copy / package).symlink_to(REPO / package)
        page = copy / "docs" / "extending.md"
        page.write_text(page.read_text() + f"\n{broken}\n")
        done = _build(copy, tmp_path / f"site-{name}")
        assert done.returncode != 0, f"a broken {name} did not fail the strict build"
        assert "no_such_page.md" in done.stderr + done.stdout or "no-such-heading" in done.stderr + done.stdout
