"""Repository-level promises: packaging metadata, CI running the README's test command, layering."""

import ast
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MEMBERS = {
    "packages/core": ("dropgrad-core", "dropgrad"),
    "apps/fewshot": ("dropgrad-fewshot", "dropgrad_fewshot"),
    "apps/tracking": ("dropgrad-tracking", "dropgrad_tracking"),
    "apps/viewpoint": ("dropgrad-viewpoint", "dropgrad_viewpoint"),
}


def _readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n\s*```", text, re.DOTALL)
    assert block, "README.md must mark its test command with <!-- test-command -->"
    return block.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    command = _readme_test_command()
    ci = (ROOT / ".ci" / "run").read_text()
    assert command in ci.splitlines(), f"{command!r} is not a line of .ci/run"
    assert "tools/setup.sh" in ci


@pytest.mark.parametrize("path", sorted(MEMBERS))
def test_member_metadata(path):
    meta = tomllib.loads((ROOT / path / "pyproject.toml").read_text())
    dist, module = MEMBERS[path]
    assert meta["project"]["name"] == dist
    assert meta["build-system"]["build-backend"] == "poetry.core.masonry.api"
    assert meta["tool"]["poetry"]["packages"] == [{"include": module, "from": "src"}]
    assert (ROOT / path / "src" / module / "__init__.py").is_file()
    assert (ROOT / path / "README.md").is_file()
    assert "<" not in meta["project"]["requires-python"], "no upper cap on Python"
    if path != "packages/core":
        assert any(d.startswith("dropgrad-core") for d in meta["project"]["dependencies"])
        core = meta["tool"]["poetry"]["dependencies"]["dropgrad-core"]
        assert core == {"path": "../../packages/core", "develop": True}


def test_root_is_a_poetry_non_package_project_listing_every_member():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    poetry = meta["tool"]["poetry"]
    assert poetry["package-mode"] is False
    deps = poetry["dependencies"]
    for path, (dist, _) in MEMBERS.items():
        assert deps[dist] == {"path": path, "develop": True}
    assert deps["torch"] == "2.14.1" and deps["torchvision"] == "0.29.1"
    assert {"pytest", "hypothesis"} <= set(poetry["group"]["dev"]["dependencies"])
    pins = (ROOT / "requirements.txt").read_text().split()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins


@pytest.mark.skipif(shutil.which("poetry") is None and not (Path(sys.executable).parent / "poetry").exists(),
                    reason="poetry is not installed in this environment")
@pytest.mark.parametrize("path", [".", *sorted(MEMBERS)])
def test_poetry_check(path):
    poetry = shutil.which("poetry", path=str(Path(sys.executable).parent)) or shutil.which("poetry")
    result = subprocess.run([poetry, "check"], cwd=ROOT / path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_layering_apps_never_import_each_other_and_core_imports_no_app():
    apps = {m for _, m in MEMBERS.values()} - {"dropgrad"}
    for path, (_, module) in MEMBERS.items():
        for source in (ROOT / path / "src").rglob("*.py"):
            forbidden = apps - {module}
            assert not (_imports(source) & forbidden), f"{source.relative_to(ROOT)} imports {_imports(source) & forbidden}"


def test_torch_load_is_always_weights_only():
    for source in list((ROOT / "packages").rglob("*.py")) + list((ROOT / "apps").rglob("*.py")) + list((ROOT / "tools").rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and getattr(node.func.value, "id", None) == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                assert "weights_only" in kw and getattr(kw["weights_only"], "value", None) is True, f"{source}:{node.lineno}"


def _dist_name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


# Declared although no source imports them: got10k 0.1.3 imports six without declaring it.
_DECLARED_FOR_OTHERS = {"apps/tracking": {"six"}}
# Imported only where installed, not declared: dropgrad.poolkernels' Triton kernels (without
# Triton the op runs ATen's pooling; torch's CUDA builds bring Triton with them on Linux).
_OPTIONAL_IMPORTS = {"packages/core": {"triton"}}


@pytest.mark.parametrize("path", sorted(MEMBERS))
def test_declared_dependencies_are_exactly_the_imported_ones(path):
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    own = {m for _, m in MEMBERS.values()}
    imported: set[str] = set()
    for source in (ROOT / path / "src").rglob("*.py"):
        optional = _OPTIONAL_IMPORTS.get(path, set())
        for name in _imports(source) - own - set(sys.stdlib_module_names) - {"__future__"} - optional:
            assert name in dists, f"{source.relative_to(ROOT)} imports {name}, which no installed distribution provides"
            imported |= {_dist_name(d) for d in dists[name]}
    meta = tomllib.loads((ROOT / path / "pyproject.toml").read_text())
    declared = {_dist_name(r) for r in meta["project"]["dependencies"]}
    assert imported - declared == set(), f"{path} imports but does not declare {sorted(imported - declared)}"
    unused = declared - imported - {"dropgrad-core"} - _DECLARED_FOR_OTHERS.get(path, set())
    assert unused == set(), f"{path} declares but never imports {sorted(unused)}"


@pytest.mark.parametrize("path", sorted(MEMBERS))
def test_member_ships_version_license_and_typing_marker(path):
    _, module = MEMBERS[path]
    meta = tomllib.loads((ROOT / path / "pyproject.toml").read_text())
    init = (ROOT / path / "src" / module / "__init__.py").read_text()
    version = re.search(r'^__version__ = "([^"]+)"$', init, re.MULTILINE)
    assert version and version.group(1) == meta["project"]["version"], f"{module}.__version__ differs from {path}/pyproject.toml"
    # poetry-core puts a LICENSE beside the pyproject into the wheel and sdist; MIT needs the notice shipped.
    assert meta["project"]["license"] == "MIT" and "MIT License" in (ROOT / path / "LICENSE").read_text()
    assert (ROOT / path / "src" / module / "py.typed").is_file()


def test_member_licenses_are_the_root_license():
    root = (ROOT / "LICENSE").read_text()
    for path in MEMBERS:
        assert (ROOT / path / "LICENSE").read_text() == root, f"{path}/LICENSE differs from LICENSE"


def _declared_ranges():
    spec = importlib.util.spec_from_file_location("declared_ranges", ROOT / "tools" / "declared_ranges.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pins(name: str) -> dict[str, str]:
    normalize = _declared_ranges().normalize
    pins = {}
    for number, line in enumerate((ROOT / name).read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][A-Za-z0-9.+]*", line), f"{name}:{number}: expected NAME==VERSION, got {line!r}"
            dist, version = line.split("==")
            pins[normalize(dist)] = version
    return pins


def test_oldest_requirements_are_exactly_the_members_lower_bounds():
    # tools/test_versions.sh oldest installs requirements-oldest.txt; what it tests must be what
    # the metadata promises, so a raised floor and its tested pin move together.
    from packaging.version import Version

    ranges = _declared_ranges()
    oldest = _pins("requirements-oldest.txt")
    floors: dict[str, str] = {}
    for folder, requirements in ranges.member_requirements().items():
        for requirement in requirements:
            name = ranges.requirement_name(requirement)
            match = re.fullmatch(r"[A-Za-z0-9._-]+>=([0-9][0-9.]*)", requirement.replace(" ", ""))
            assert match, f"{folder}/pyproject.toml: {requirement!r} should be NAME>=FLOOR, no upper cap"
            assert floors.setdefault(name, match.group(1)) == match.group(1), (
                f"{folder}/pyproject.toml: {name} floor {match.group(1)} differs from another member's {floors[name]}")
    for name, floor in floors.items():
        assert name in oldest, f"requirements-oldest.txt does not pin {name} (floor {floor})"
        assert Version(oldest[name]) == Version(floor), f"requirements-oldest.txt pins {name}=={oldest[name]}, the floor is {floor}"
    tools = {ranges.requirement_name(r) for r in ranges.tool_requirements()}
    assert set(oldest) - set(floors) <= tools, f"requirements-oldest.txt pins {sorted(set(oldest) - set(floors) - tools)}, which no member declares"


def test_the_pinned_requirements_lie_within_every_declared_range():
    from packaging.requirements import Requirement

    ranges = _declared_ranges()
    pins = _pins("requirements.txt")
    for folder, requirements in ranges.member_requirements().items():
        for requirement in requirements:
            req = Requirement(requirement)
            name = ranges.normalize(req.name)
            assert name in pins, f"requirements.txt does not pin {name}, which {folder} needs"
            assert req.specifier.contains(pins[name], prereleases=True), f"requirements.txt: {name}=={pins[name]} is outside {folder}'s {requirement!r}"
