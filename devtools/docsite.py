"""MkDocs hook (mkdocs.yml `hooks:`): the contract documents, generated at build time.

The gateway's OpenAPI document, the presence API's and the AsyncAPI document of the
events are made from the code at every build, as `aifi-gateway openapi`, `aifi-presence
openapi` and `aifi-gateway asyncapi` print them, and added to the site as JSON files and
as pages that summarize them: no copy is committed, so none can drift from the code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

from core import asyncapi, settings
from gateway import openapi as gateway_openapi
from presence import openapi as presence_openapi

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


@dataclass(frozen=True, slots=True)
class Generated:
    """One generated document: its page's path in the site (and the JSON beside it)."""

    page: str
    title: str
    command: str
    make: Callable[[Path], dict[str, Any]]
    summary: Callable[[dict[str, Any]], Iterator[str]]

    @property
    def json_name(self) -> str:
        return Path(self.page).with_suffix(".json").name


def gateway_document(root: Path) -> dict[str, Any]:
    # The repository's config.yaml alone: a developer's AIFI_* variables must not change it.
    return gateway_openapi.document(settings.load({"AIFI_CONFIG": str(root / "config.yaml")}))


def openapi_summary(document: dict[str, Any]) -> Iterator[str]:
    yield "| method | path | summary | answers |"
    yield "|---|---|---|---|"
    for path, item in document["paths"].items():
        for method in (m for m in METHODS if m in item):
            operation = item[method]
            codes = ", ".join(str(code) for code in operation.get("responses", {}))
            summary = operation.get("summary", "")
            yield f"| `{method.upper()}` | `{path}` | {summary} | {codes} |"


def asyncapi_summary(document: dict[str, Any]) -> Iterator[str]:
    yield "| channel | address | messages |"
    yield "|---|---|---|"
    for name, channel in document["channels"].items():
        messages = ", ".join(f"`{m}`" for m in channel.get("messages", {}))
        yield f"| `{name}` | `{channel.get('address')}` | {messages} |"


DOCUMENTS = (
    Generated(
        "reference/gateway-openapi.md",
        "Gateway OpenAPI",
        "aifi-gateway openapi",
        gateway_document,
        openapi_summary,
    ),
    Generated(
        "reference/presence-openapi.md",
        "Presence API OpenAPI",
        "aifi-presence openapi",
        lambda _root: presence_openapi.document(),
        openapi_summary,
    ),
    Generated(
        "reference/asyncapi.md",
        "Events AsyncAPI",
        "aifi-gateway asyncapi",
        lambda _root: asyncapi.document(),
        asyncapi_summary,
    ),
)


def page(generated: Generated, text: str, document: dict[str, Any]) -> str:
    lines = [
        f"# {generated.title}",
        "",
        f"Generated from the code when this site was built, as `{generated.command}` prints",
        f"it; the raw document: [{generated.json_name}]({generated.json_name}).",
        "",
        *generated.summary(document),
        "",
        "```json",
        text,
        "```",
        "",
    ]
    return "\n".join(lines)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    root = Path(config.config_file_path).parent
    for generated in DOCUMENTS:
        document = generated.make(root)
        text = orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()
        json_uri = str(Path(generated.page).with_suffix(".json"))
        files.append(File.generated(config, json_uri, content=text))
        content = page(generated, text, document)
        files.append(File.generated(config, generated.page, content=content))
    return files
