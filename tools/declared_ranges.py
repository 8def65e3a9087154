"""Print the external requirements the members declare, one per line (``torch>=2.6``).

That is every member's ``[project] dependencies`` (the members themselves left out), the root's
dev group and the members' build backend. ``tools/test_versions.sh newest`` installs these,
upgraded, to test the newest releases the ranges admit. A name declared twice is printed once
per distinct requirement; tests/integration/test_repository.py checks that they agree.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEMBER_DIRS = ("packages/core", "apps/fewshot", "apps/tracking", "apps/viewpoint")
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    """A distribution name as the index compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement.strip())
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return normalize(match.group(1))


def member_requirements(root: Path = ROOT) -> dict[str, list[str]]:
    """Each member's external runtime requirements, by member folder."""
    own = {normalize(tomllib.loads((root / d / "pyproject.toml").read_text())["project"]["name"]) for d in MEMBER_DIRS}
    out = {}
    for folder in MEMBER_DIRS:
        deps = tomllib.loads((root / folder / "pyproject.toml").read_text())["project"]["dependencies"]
        out[folder] = [d for d in deps if requirement_name(d) not in own]
    return out


def tool_requirements(root: Path = ROOT) -> list[str]:
    """The root's dev group and the members' build backend, as PEP 508 strings.

    The dev group's poetry constraints are written as ``>=`` ranges, which read the same in
    PEP 508 once joined to the name.
    """
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    dev = meta["tool"]["poetry"]["group"]["dev"]["dependencies"]
    build = tomllib.loads((root / MEMBER_DIRS[0] / "pyproject.toml").read_text())["build-system"]["requires"]
    return [f"{name}{spec}" for name, spec in dev.items()] + list(build)


def main() -> None:
    seen: set[str] = set()
    for requirement in [r for reqs in member_requirements().values() for r in reqs] + tool_requirements():
        if requirement not in seen:
            seen.add(requirement)
            print(requirement)


if __name__ == "__main__":
    main()
