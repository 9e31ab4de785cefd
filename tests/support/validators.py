"""The ecosystem's own validators of our contract documents, run as the npm packages that
`make test` installs (pinned in package-lock.json), with no network and no file written
outside the test's directory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Final

import orjson

NODE_BIN: Final = Path(__file__).resolve().parents[2] / "node_modules" / ".bin"
TIMEOUT_S: Final = 120


def _run(tool: str, args: list[str], workdir: Path, env: dict[str, str]) -> str:
    """Run `tool`; its output, once it exited 0 (else the test fails showing it)."""
    path = NODE_BIN / tool
    assert path.exists(), f"{path} is missing: run `make node_modules/.installed`"
    result = subprocess.run(
        [str(path), *args],
        capture_output=True,
        text=True,
        env=os.environ | {"HOME": str(workdir)} | env,
        cwd=workdir,
        timeout=TIMEOUT_S,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def _written(document: dict[str, Any], path: Path) -> Path:
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return path


def redocly_lint(document: dict[str, Any], workdir: Path) -> str:
    """`redocly lint` with its recommended rules; telemetry and the update check off."""
    env = {"REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true"}
    target = _written(document, workdir / "openapi.json")
    return _run("redocly", ["lint", "--extends", "recommended", str(target)], workdir, env)


def asyncapi_validate(document: dict[str, Any], workdir: Path) -> str:
    """`asyncapi validate`, failing on errors only. Without a config file saying otherwise
    the CLI sends usage metrics to a remote service, and it checks for a new version."""
    analytics = workdir / "asyncapi-analytics.json"
    analytics.write_bytes(
        orjson.dumps({"analyticsEnabled": "false", "infoMessageShown": "true", "userID": "-"})
    )
    env = {
        "ASYNCAPI_METRICS_CONFIG_PATH": str(analytics),
        "ASYNCAPI_SKIP_NEW_VERSION_CHECK": "true",
    }
    target = _written(document, workdir / "asyncapi.json")
    return _run("asyncapi", ["validate", "--fail-severity", "error", str(target)], workdir, env)
