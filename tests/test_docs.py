"""The documentation: the README as the front door, the MkDocs site (docs/, mkdocs.yml,
devtools/docsite.py) built strictly, and every shell block of either run as written.

A shell block (```sh) runs with `bash -e -o pipefail` from a view of the repository
without its data/ (nor the caller's AIFI_* variables), and must exit 0. The line before
its fence may say otherwise, with a reason:
- `<!-- check: gateway; why -->`: its curls post to the gateway of a running `make run`;
  it runs beside a gateway of its own, started in a network namespace of its own
  (port 8080 there is no one else's), and each curl must be answered "ok";
- `<!-- check: syntax; why -->`: it needs what a test cannot have here (the whole stack
  of `make run`, Docker, a cluster), or is the suite itself: it is only parsed, `bash -n`.
No block needs a broker to be checked."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
import pytest
import yaml

from core import asyncapi
from core.settings import load
from devtools.stack import dev_token
from gateway import openapi as gateway_openapi
from presence import openapi as presence_openapi

ROOT: Final = Path(__file__).resolve().parents[1]
README: Final = ROOT / "README.md"
DOCS: Final = ROOT / "docs"
README_MAX_LINES: Final = 200
FENCE: Final = re.compile(r"^(```+)\s*([\w+-]*)")
MARKER: Final = re.compile(r"^<!--\s*check:\s*(syntax|gateway);\s*(\S.*?)\s*-->$")
LINK: Final = re.compile(r"\]\(([^)\s]+)\)")
SHELL_NAMES: Final = {"bash", "shell", "console", "zsh", "shell-session"}
BLOCK_TIMEOUT_S: Final = 60
STACK_COMMAND: Final = re.compile(r"\b(make|docker|curl|rabbitmqctl|pytest)\b")
NOT_BESIDE_A_GATEWAY: Final = re.compile(r"\b(make|docker|rabbitmqctl|pytest)\b")
BASH: Final = ["bash", "-e", "-o", "pipefail"]
# Run inside the namespace: loopback up, the gateway in the background (its output to a
# file: it must not hold the test's pipe open), the block once it answers.
GATEWAY: Final = """
ip link set lo up
.venv/bin/aifi-gateway >data/gateway.log 2>&1 </dev/null &
for _ in $(seq 300); do
  curl -s -o /dev/null http://127.0.0.1:8080/healthz && break
  sleep 0.1
done
exec bash -e -o pipefail -c "$1"
"""
# What a running `make run` (and a build of this site) keeps in the checkout.
PRIVATE: Final = frozenset({"data", ".rabbitmq", "build"})


@dataclass(frozen=True, slots=True)
class Block:
    page: Path
    line: int
    language: str
    code: str
    check: str  # "run", or the marker's: "gateway" or "syntax"

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> Iterator[Block]:
    lines = page.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i] == opening[1])
        previous = lines[index - 1] if index else ""
        marker = MARKER.match(previous)
        code = "\n".join(lines[index + 1 : end]) + "\n"
        yield Block(page, index + 1, opening[2], code, marker[1] if marker else "run")
        index = end + 1


def pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def shell_blocks() -> list[Block]:
    return [block for page in pages() for block in blocks(page) if block.language == "sh"]


def build(site: Path, root: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=root,
        # Material's notice about MkDocs 2.0 is no warning of this site's.
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    built = build(site)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "WARNING" not in built.stderr, built.stderr
    return site


def test_the_site_builds_strictly_with_every_page(site: Path) -> None:
    for page in DOCS.rglob("*.md"):
        assert (site / page.relative_to(DOCS).with_suffix("") / "index.html").exists() or (
            page.name == "index.md" and (site / "index.html").exists()
        ), page


def test_the_generated_documents_are_the_codes(site: Path) -> None:
    reference = site / "reference"
    assert orjson.loads((reference / "asyncapi.json").read_bytes()) == asyncapi.document()
    built = orjson.loads((reference / "presence-openapi.json").read_bytes())
    assert built == presence_openapi.document()
    gateway = orjson.loads((reference / "gateway-openapi.json").read_bytes())
    assert gateway == gateway_openapi.document(load({"AIFI_CONFIG": str(ROOT / "config.yaml")}))
    assert "/webhooks/aifi/entered" in (reference / "gateway-openapi" / "index.html").read_text()


def test_a_broken_anchor_fails_the_build(tmp_path: Path) -> None:
    """The strictness the site fixture relies on, on a copy with one link to nowhere."""
    copy = tmp_path / "copy"
    shutil.copytree(DOCS, copy / "docs")
    for name in ("mkdocs.yml", "config.yaml", "devtools/docsite.py"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, copy / name)
    with (copy / "docs" / "development.md").open("a") as page:
        page.write("\n[nowhere](contract.md#no-such-heading)\n")
    built = build(tmp_path / "site", copy)
    assert built.returncode != 0
    assert "no-such-heading" in built.stderr


def nav_pages(nav: Any) -> Iterator[str]:
    if isinstance(nav, str):
        yield nav
    elif isinstance(nav, list):
        for item in nav:
            yield from nav_pages(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            yield from nav_pages(value)


def test_the_readme_is_the_front_door() -> None:
    text = README.read_text()
    assert len(text.splitlines()) < README_MAX_LINES
    assert "make run" in text
    assert "make test" in text
    linked = set(LINK.findall(text))
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    # Each page written by hand is one click away; the generated ones from their pages.
    for page in nav_pages(nav):
        if not page.startswith("reference/"):
            assert f"docs/{page}" in linked, f"README links no docs/{page}"


def anchors(page: Path) -> set[str]:
    """The ids MkDocs' toc gives the page's headings (its default slugify)."""
    headings = [line.lstrip("#").strip() for line in page.read_text().splitlines()]
    return {
        re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower())
        for heading, line in zip(headings, page.read_text().splitlines(), strict=True)
        if line.startswith("#")
    }


def test_the_readmes_links_resolve() -> None:
    for target in LINK.findall(README.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        assert (ROOT / path).exists(), target
        if anchor:
            assert anchor in anchors(ROOT / path), target


def test_shell_blocks_are_marked_sh() -> None:
    for page in pages():
        for block in blocks(page):
            assert block.language, f"{block.name}: a fence without a language"
            assert block.language not in SHELL_NAMES, f"{block.name}: write ```sh"


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AIFI_")}


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The repository as a block sees it, without the data of a running `make run`:
    every top-level entry linked but `data/` (tokens, spool, ledger), `.rabbitmq/` and
    `build/`, so a block reads and writes no state of the developer's."""
    view = tmp_path / "checkout"
    view.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in PRIVATE:
            (view / entry.name).symlink_to(entry)
    return view


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """`argv` in a process group of its own, killed whole when it ends or hangs."""
    with subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            output, _ = process.communicate(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            return -1, f"still running after {BLOCK_TIMEOUT_S} s\n{output}"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # what it left behind: a gateway
    return process.returncode, output


def with_gateway(block: Block, view: Path) -> tuple[int, str]:
    """The block beside a gateway of its own, as `make run` starts it (the view's
    data/dev-token, port 8080), in a network namespace of its own: its 127.0.0.1:8080
    is no one else's, and no broker answers there, so the gateway answers from its
    spool (the view's data/spool)."""
    env = environment() | {"AIFI_TOKENS": f"dev={dev_token(view / 'data' / 'dev-token')}"}
    code, output = run(
        ["unshare", "--net", "bash", "-c", GATEWAY, "gateway", block.code], view, env
    )
    log = view / "data" / "gateway.log"
    return code, output + (f"\ngateway log:\n{log.read_text()}" if code and log.exists() else "")


def parses(block: Block) -> None:
    parsed = subprocess.run(
        ["bash", "-n"], input=block.code, capture_output=True, text=True, check=False
    )
    assert parsed.returncode == 0, parsed.stderr


def runs(block: Block, view: Path) -> None:
    # A safety net: these start or reach a stack, a suite, containers or a cluster.
    assert STACK_COMMAND.search(block.code) is None, f"{block.name}: mark it"
    code, output = run([*BASH, "-c", block.code], view, environment())
    assert code == 0, f"{block.name} exited {code}\n{block.code}{output}"


def runs_beside_a_gateway(block: Block, view: Path) -> None:
    assert NOT_BESIDE_A_GATEWAY.search(block.code) is None, f"{block.name}: mark it syntax"
    code, output = with_gateway(block, view)
    assert code == 0, f"{block.name} exited {code}\n{block.code}{output}"
    # Each curl of such a block posts a webhook; each must have been taken.
    assert output.count('"ok"') == block.code.count("curl "), output


@pytest.mark.parametrize("block", shell_blocks(), ids=lambda block: block.name)
def test_shell_block(block: Block, checkout: Path) -> None:
    if block.check == "syntax":
        parses(block)
    elif block.check == "gateway":
        runs_beside_a_gateway(block, checkout)
    else:
        runs(block, checkout)
