"""The distributions: ``python -m build`` makes a clean sdist and wheel, ``twine check`` passes.

The build runs on a copy of the working tree (so that it leaves nothing in it), into which
a few caches and a built documentation site are planted to show that they stay out; it runs
without network (``--no-isolation``: setuptools, build and twine come with the ``test``
extra).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import celery_resilience
from tests.helpers import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli, which pytest itself needs there
    import tomli as tomllib

pytestmark = pytest.mark.timeout(300)

#: Never copied: the repository's history and virtual environments (large, irrelevant).
SKIP = shutil.ignore_patterns(".git", ".venv", ".venv-*", "build", "dist", "*.egg-info")
#: Nothing of these may appear anywhere in a distribution.
UNWANTED = re.compile(
    r"(^|/)(tests|example_project|benchmarks|docs|site|__pycache__|\.[a-z_]+_cache|\.hypothesis)"
    r"(/|$)|\.py[cod]$|^mkdocs\.yml$"
)


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build the sdist and the wheel (the wheel from the sdist, as ``build`` does)."""
    base = tmp_path_factory.mktemp("packaging")
    tree = base / "tree"
    shutil.copytree(REPO_ROOT, tree, ignore=SKIP, symlinks=True)
    for planted in (
        tree / "celery_resilience" / "__pycache__" / "planted.cpython-311.pyc",
        tree / "celery_resilience" / ".mypy_cache" / "planted.json",
        tree / ".ruff_cache" / "planted",
        tree / "example_project" / "__pycache__" / "planted.pyc",
        tree / "site" / "index.html",
        tree / "site" / "reference" / "index.html",
    ):
        planted.parent.mkdir(parents=True, exist_ok=True)
        planted.write_bytes(b"planted")
    out = base / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(tree)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


def _wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def _sdist_names(sdist: Path) -> list[str]:
    with tarfile.open(sdist) as archive:
        return [m.name for m in archive.getmembers() if m.isfile()]


def test_the_wheel_holds_the_package_and_nothing_else(dists: dict[str, Path]):
    """Only celery_resilience (with py.typed and the Lua scripts) and its dist-info."""
    version = celery_resilience.__version__
    names = _wheel_names(dists["wheel"])
    assert dists["wheel"].name == f"celery_resilience-{version}-py3-none-any.whl"
    dist_info = f"celery_resilience-{version}.dist-info/"
    assert {n.split("/")[0] + "/" for n in names} == {"celery_resilience/", dist_info}
    assert [n for n in names if UNWANTED.search(n)] == []
    assert "celery_resilience/py.typed" in names
    lua = {Path(n).name for n in names if n.endswith(".lua")}
    source = {p.name for p in (REPO_ROOT / "celery_resilience" / "state" / "lua").glob("*.lua")}
    assert lua == source
    modules = {n for n in names if n.endswith(".py")}
    expected = {
        p.relative_to(REPO_ROOT).as_posix()
        for p in (REPO_ROOT / "celery_resilience").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert modules == expected
    assert f"{dist_info}licenses/LICENSE" in names


def test_the_wheel_metadata_names_version_license_classifiers_and_urls(dists: dict[str, Path]):
    """Version from celery_resilience.__version__; MIT; the Python versions; the URLs."""
    with zipfile.ZipFile(dists["wheel"]) as archive:
        metadata = archive.read(
            f"celery_resilience-{celery_resilience.__version__}.dist-info/METADATA"
        ).decode()
        entry_points = archive.read(
            f"celery_resilience-{celery_resilience.__version__}.dist-info/entry_points.txt"
        ).decode()
    assert f"\nVersion: {celery_resilience.__version__}\n" in metadata
    assert "\nLicense-Expression: MIT\n" in metadata
    assert "\nRequires-Python: >=3.10\n" in metadata
    for minor in range(10, 15):
        assert f"Classifier: Programming Language :: Python :: 3.{minor}\n" in metadata
    for label in ("Homepage", "Documentation", "Source", "Issues", "Changelog"):
        assert f"\nProject-URL: {label}, https://" in metadata
    assert "resilience = celery_resilience.cli:resilience" in entry_points


def test_the_sdist_holds_the_package_its_documents_and_no_caches(dists: dict[str, Path]):
    """The sdist: the package, pyproject, README, LICENSE, CHANGELOG; no tests, no example."""
    top = f"celery_resilience-{celery_resilience.__version__}/"
    names = _sdist_names(dists["sdist"])
    assert all(n.startswith(top) for n in names)
    relative = [n.removeprefix(top) for n in names]
    assert [n for n in relative if UNWANTED.search(n)] == []
    roots = {n.split("/")[0] for n in relative}
    assert roots == {
        "celery_resilience",
        "celery_resilience.egg-info",
        "CHANGELOG.md",
        "LICENSE",
        "MANIFEST.in",
        "PKG-INFO",
        "README.md",
        "pyproject.toml",
        "setup.cfg",
    }


def test_the_version_is_written_in_one_place():
    """pyproject.toml reads it from ``celery_resilience.__version__`` and writes none itself."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    written = re.findall(
        r"^__version__ = ", (REPO_ROOT / "celery_resilience" / "__init__.py").read_text(), re.M
    )
    assert len(written) == 1


def test_twine_check_passes(dists: dict[str, Path]):
    """The long description renders and the metadata is complete for an upload."""
    done = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dists.values())],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 2


def test_the_changelog_follows_keep_a_changelog():
    """An Unreleased section first, versions with dates, the standard kinds of change, and a
    link for every version."""
    text = (REPO_ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n")
    assert "keepachangelog.com" in text
    versions = re.findall(r"^## \[([^\]]+)\](.*)$", text, flags=re.MULTILINE)
    assert versions[0] == ("Unreleased", "")
    for version, rest in versions[1:]:
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
        assert re.fullmatch(r" - \d{4}-\d{2}-\d{2}", rest), rest
    kinds = set(re.findall(r"^### (.+)$", text, flags=re.MULTILINE))
    assert kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
    for version, _ in versions:
        assert re.search(rf"^\[{re.escape(version)}\]: https://", text, flags=re.MULTILINE)
