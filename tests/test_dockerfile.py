"""The Dockerfile as its users judge it, without a Docker engine: a pinned base, the locked
dependency tree installed with hashes, hadolint clean, a user other than root."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
HADOLINT = Path(sys.executable).parent / "hadolint"
EARLIER_UID = 999
PINNED = re.compile(r"^([A-Za-z0-9._-]+)==([^ \\]+) \\$")


def instructions(dockerfile: Path) -> list[list[str]]:
    """Each instruction as words, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", dockerfile.read_text())
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [shlex.split(line, posix=False) for line in lines]


def runtime_requirements() -> list[Requirement]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [Requirement(spec) for spec in pyproject["project"]["dependencies"]]


def locked() -> dict[NormalizedName, Version]:
    """requirements.lock as name -> version; fails on any line that is not an exact pin."""
    pins: dict[NormalizedName, Version] = {}
    for line in LOCK.read_text().splitlines():
        if not line or line.startswith(("#", " ")):
            continue
        match = PINNED.match(line)
        assert match, f"not an exact pin with hashes: {line!r}"
        pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def requires_of(name: str, extras: frozenset[str]) -> list[Requirement]:
    """What an installed distribution (with `extras`) needs on this Python and platform."""
    found = []
    for spec in metadata.requires(name) or []:
        requirement = Requirement(spec)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": e}) for e in {"", *extras}):
            found.append(requirement)
    return found


def closure(roots: list[Requirement]) -> set[NormalizedName]:
    """Every distribution the runtime requirements pull in, read from installed metadata."""
    seen: set[NormalizedName] = set()
    todo = list(roots)
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name not in seen or requirement.extras:
            seen.add(name)
            todo += requires_of(requirement.name, frozenset(requirement.extras))
    return seen


def test_the_base_is_pinned_to_a_full_python_and_debian_release() -> None:
    stages = [words for words in instructions(DOCKERFILE) if words[0] == "FROM"]
    names = {words[3] for words in stages if len(words) == 4}
    bases = {words[1] for words in stages} - names
    assert len(bases) == 1, bases
    [base] = bases
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base


def test_the_lock_pins_each_runtime_dependency_within_pyproject_s_range() -> None:
    pins = locked()
    for requirement in runtime_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])


def test_the_lock_holds_every_distribution_the_dependencies_pull_in() -> None:
    needed = closure(runtime_requirements())
    assert {"aiormq", "pamqp", "psycopg-binary", "psycopg-pool"} <= needed
    assert needed <= set(locked()), needed - set(locked())


def test_every_pin_carries_a_file_hash() -> None:
    entries = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text())
    pins = [entry for entry in entries if PINNED.match(entry.split("\n", 1)[0])]
    assert len(pins) == len(locked())
    for entry in pins:
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), entry.splitlines()[0]


def test_the_image_installs_the_lock_with_hashes_and_nothing_else_with_dependencies() -> None:
    runs = [" ".join(words) for words in instructions(DOCKERFILE) if words[0] == "RUN"]
    installs = [run for run in runs if "pip install" in run]
    [lock] = [run for run in installs if "requirements.lock" in run]
    assert "--require-hashes" in lock
    others = [run for run in installs if run != lock]
    assert others, "the project itself is installed too"
    for run in others:
        assert "--no-deps" in run, run
        assert installs.index(run) > installs.index(lock), run


def test_the_processes_run_as_the_user_that_owns_earlier_releases_volumes() -> None:
    """Earlier releases ran as `useradd --system` gave on this base: 999:999. The spool and
    ledger volumes they wrote are owned by it; another uid could not write them."""
    users = [words[1] for words in instructions(DOCKERFILE) if words[0] == "USER"]
    assert users, "no USER: the processes would run as root"
    assert users[-1] == f"{EARLIER_UID}:{EARLIER_UID}"
    [setup] = [" ".join(w) for w in instructions(DOCKERFILE) if "useradd" in " ".join(w)]
    assert f"--uid {EARLIER_UID} --gid {EARLIER_UID}" in setup
    assert f"chown -R {EARLIER_UID}:{EARLIER_UID} /app/data" in setup


def dockerfiles() -> list[Path]:
    return [DOCKERFILE, *sorted((ROOT / "deploy" / "standins").glob("*/Dockerfile"))]


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [str(HADOLINT), "--no-color", *map(str, dockerfiles())],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == ""


def test_every_rule_hadolint_is_told_to_ignore_is_justified_above_it() -> None:
    for path in dockerfiles():
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if match := re.match(r"# hadolint ignore=([A-Z0-9,]+)", line):
                above = lines[number - 1]
                assert above.startswith("# "), (path, number)
                assert "hadolint" not in above, (path, number)
                for rule in match[1].split(","):
                    assert rule in "\n".join(lines[:number]), (path, rule, "not explained")


def test_the_final_stage_takes_no_sources_and_no_build_tree() -> None:
    steps = instructions(DOCKERFILE)
    last = max(i for i, words in enumerate(steps) if words[0] == "FROM")
    copies = [words[1:] for words in steps[last:] if words[0] == "COPY"]
    from_context = [words for words in copies if not words[0].startswith("--from=")]
    assert from_context == [["config.yaml", "./"]]
    from_build = [words[1:] for words in copies if words[0].startswith("--from=")]
    assert from_build == [["/opt/aifi", "/opt/aifi"]]
