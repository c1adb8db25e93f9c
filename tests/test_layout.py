"""The code's shape (issue 15): reid/ modules stay small and Ray-free, no private name crosses a
module boundary, and the sub-packages hold what the architecture says they hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("reid", "jobs", "cluster", "tests", "benchmarks", "scripts")
MAX_LINES = 420  # "about 400": a module past this does more than one thing


def sources(*roots: str) -> list[Path]:
    return sorted(p for r in roots for p in (REPO / r).rglob("*.py"))


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def test_no_reid_module_is_over_about_400_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in sources("reid")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these by purpose: {long}"


def test_reid_never_imports_ray():
    found = []
    for p in sources("reid"):
        for node in ast.walk(tree(p)):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found += [f"{p.relative_to(REPO)}:{node.lineno}" for n in names if n.split(".")[0] == "ray"]
    assert not found, f"reid/ is the Ray-free library; Ray belongs in jobs/ or cluster/: {found}"


def private_uses(path: Path) -> list[str]:
    """``from ours import _x`` and ``ours_module._x`` in one file (names of this project only)."""
    bad, modules = [], {}
    body = tree(path)
    for node in ast.walk(body):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    bad.append(f"{node.lineno}: from {node.module} import {a.name}")
                modules[a.asname or a.name] = node.module
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PACKAGES:
                    modules[a.asname or a.name.split(".")[0]] = a.name
    for node in ast.walk(body):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            bad.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return bad


def test_no_private_name_is_used_across_modules():
    bad = {str(p.relative_to(REPO)): u for p in sources(*PACKAGES) if (u := private_uses(p))}
    assert not bad, f"make these public (or move them where they are used): {bad}"


def test_private_name_check_sees_both_spellings(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from reid.schema import _x\nfrom reid import storage\nstorage._y\n")
    assert private_uses(probe) == ["1: from reid.schema import _x", "3: storage._y"]


@pytest.mark.parametrize(
    ("package", "modules"),
    [
        ("synthetic", {"survey", "render", "scenes", "truth"}),
        (
            "evaluation",
            {"data", "protocols", "exclusions", "scoring", "metrics", "plots", "report", "results"},
        ),
        ("search", {"faiss_index", "index_store", "build", "allvsall", "population"}),
        ("data", {"labels", "splits", "sightings", "trainval", "cache", "dataset", "sampler"}),
        ("model", {"spec", "network", "package", "backbones", "losses", "weight_sources"}),
        ("images", {"imageio", "jpegroi", "preprocess", "transforms"}),
    ],
)
def test_sub_packages_hold_their_modules(package, modules):
    found = {p.stem for p in (REPO / "reid" / package).glob("*.py")} - {"__init__"}
    assert modules <= found, f"reid/{package} lacks {sorted(modules - found)}"
    init = (REPO / "reid" / package / "__init__.py").read_text()
    assert all(f"reid.{package}.{m}" in init for m in modules), "the package docstring names each module"


def test_s3_and_ray_markers_follow_the_fixtures(request):
    """`-m "not s3"` / `-m "not ray"` must leave out every test that starts the S3 server or Ray
    (tests/conftest.py derives the markers from the fixtures; nothing to remember by hand)."""
    missing = []
    for item in request.session.items:
        names = set(item.fixturenames)
        if "s3_bucket" in names and item.get_closest_marker("s3") is None:
            missing.append(f"{item.nodeid}: s3")
        if names & {"ray_local", "served", "reviewed"} and item.get_closest_marker("ray") is None:
            missing.append(f"{item.nodeid}: ray")
    assert not missing
