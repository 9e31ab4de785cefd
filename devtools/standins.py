"""Stand-ins for the registry images the stack names, where no registry can be reached.

The project's Dockerfile (`FROM`) and docker-compose.yml (`image:` of the services it does
not build) name images from Docker Hub. `ensure_standins` makes each exist in a running
Docker engine: already there, or pulled, or else built under the same name from Debian's
packages alone:

- the Python base: a Debian bookworm root (`debootstrap`, with python3, pip and this
  machine's CA bundle) imported as the Dockerfile's base;
- `rabbitmq:*`: Debian's RabbitMQ 3.10 on that base (deploy/standins/rabbitmq/);
- `postgres:*`: Debian's PostgreSQL 15 on that base (deploy/standins/postgres/).

A built stand-in is saved as a tarball in a cache folder, named after a hash of its recipe,
and loaded from there the next time. Each stand-in carries the label `STANDIN_LABEL` (its
recipe's hash), which tells it apart from a pulled image.

    python -m devtools.standins [--cache-dir DIR]    # the engine at DOCKER_HOST (needs root)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

ROOT: Final = Path(__file__).resolve().parent.parent
STANDINS_DIR: Final = ROOT / "deploy" / "standins"
STANDIN_LABEL: Final = "org.aifi.standin"
LABEL_FORMAT: Final = f'{{{{index .Config.Labels "{STANDIN_LABEL}"}}}}'
CA_BUNDLE: Final = Path("/etc/ssl/certs/ca-certificates.crt")
SOURCES_DIR: Final = Path("/etc/apt/sources.list.d")
DEFAULT_MIRROR: Final = "http://deb.debian.org/debian"
SUITE: Final = "bookworm"
BASE_PACKAGES: Final = ("python3", "python3-venv", "python3-pip", "ca-certificates")
DEFAULT_CACHE_DIR: Final = Path.home() / ".cache" / "aifi-standins"
PULL_TIMEOUT_S: Final = 120.0
HASH_CHARS: Final = 16
# The official python image's environment; Debian's pip reads the system CA bundle anyway.
BASE_CHANGES: Final = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    f"ENV PIP_CERT={CA_BUNDLE}",
    'CMD ["python3"]',
)
# What Debian's own container images add to a root, so that a package installed on the
# base leaves neither its downloads nor its documentation in the layer, and starts no service.
APT_CLEAN: Final = (
    'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb'
    ' /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
    'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb'
    ' /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
    'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
)
CONTAINER_FILES: Final = (
    ("etc/apt/apt.conf.d/docker-clean", APT_CLEAN, 0o644),
    ("etc/apt/apt.conf.d/docker-no-languages", 'Acquire::Languages "none";\n', 0o644),
    (
        "etc/dpkg/dpkg.cfg.d/docker-excludes",
        "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n"
        "path-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n"
        "path-exclude /usr/share/locale/*\n",
        0o644,
    ),
    ("usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755),
)
# Bumped when the way a base root is made changes, so that cached bases are rebuilt.
BASE_RECIPE_VERSION: Final = "2"


class StandinError(RuntimeError):
    """An image could be neither found, pulled nor built."""


@dataclass(frozen=True)
class Docker:
    """The `docker` client of one engine (its environment names the engine)."""

    env: Mapping[str, str]

    def run(self, *args: str, stdin: int | None = None) -> str:
        """Run `docker ARGS`; its output, or StandinError with what it said."""
        done = subprocess.run(
            ["docker", *args],
            env=dict(self.env),
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise StandinError(f"docker {' '.join(args[:3])}: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def answers(self) -> None:
        """Fail early, with what the client said, where no engine answers."""
        try:
            self.run("version", "--format", "{{.Server.Version}}")
        except StandinError as exc:
            where = self.env.get("DOCKER_HOST", "the default socket")
            raise StandinError(f"no Docker engine answers at {where}: {exc}") from exc

    def label(self, name: str) -> str | None:
        """The stand-in label of image `name` ("" on other images), or None when absent."""
        try:
            found = self.run("image", "inspect", "--format", LABEL_FORMAT, name)
        except StandinError:
            return None
        return found.strip().removeprefix("<no value>")

    def image_id(self, name: str) -> str:
        return self.run("image", "inspect", "--format", "{{.Id}}", name).strip()

    def pull(self, name: str) -> bool:
        """Whether `name` could be pulled from its registry."""
        try:
            subprocess.run(
                ["docker", "pull", "--quiet", name],
                env=dict(self.env),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=PULL_TIMEOUT_S,
                check=True,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return False
        return True


def dockerfile_bases(dockerfile: Path) -> list[str]:
    """The images the Dockerfile's `FROM` lines name (stages it names itself left out)."""
    bases: list[str] = []
    stages: set[str] = set()
    for line in dockerfile.read_text().splitlines():
        words = [w for w in line.split() if not w.startswith("--")]
        if words and words[0].upper() == "FROM":
            if words[1] not in stages and words[1] not in bases:
                bases.append(words[1])
            if len(words) >= 4 and words[2].upper() == "AS":
                stages.add(words[3])
    return bases


def compose_images(compose_file: Path) -> list[str]:
    """The images of the compose services that are pulled rather than built."""
    services = yaml.safe_load(compose_file.read_text())["services"].values()
    return sorted({s["image"] for s in services if "image" in s and "build" not in s})


def kind_of(name: str) -> str:
    """Which stand-in recipe serves image `name`: "base", "rabbitmq" or "postgres"."""
    repository = name.rpartition(":")[0] if ":" in name.rpartition("/")[2] else name
    kind = {"python": "base", "rabbitmq": "rabbitmq", "postgres": "postgres"}.get(
        repository.removeprefix("docker.io/").removeprefix("library/")
    )
    if kind is None:
        raise StandinError(f"{name}: cannot be pulled here and no stand-in recipe makes it")
    return kind


def mirror(sources_dir: Path = SOURCES_DIR) -> str:
    """The Debian mirror this machine's apt uses for the suite (deb822 `.sources` files)."""
    for path in sorted(sources_dir.glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = dict(
                re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.MULTILINE)
            )
            if SUITE in fields.get("Suites", "").split() and fields.get("URIs"):
                return fields["URIs"].split()[0]
    return DEFAULT_MIRROR


def digest(*parts: bytes) -> str:
    hashed = hashlib.sha256()
    for part in parts:
        hashed.update(hashlib.sha256(part).digest())
    return hashed.hexdigest()[:HASH_CHARS]


def base_recipe_hash(mirror_url: str) -> str:
    """What a base root is made of: the packages, the mirror and the CA bundle it trusts."""
    files = [f"{path}\n{text}\n{mode:o}" for path, text, mode in CONTAINER_FILES]
    recipe = [BASE_RECIPE_VERSION, SUITE, mirror_url, *BASE_PACKAGES, *BASE_CHANGES, *files]
    return digest("\n".join(recipe).encode(), CA_BUNDLE.read_bytes())


def service_recipe_hash(kind: str, base_id: str) -> str:
    """A stand-in's files and the image it is built on."""
    files = sorted(p for p in (STANDINS_DIR / kind).rglob("*") if p.is_file())
    return digest(base_id.encode(), *(f"{p.name}\n".encode() + p.read_bytes() for p in files))


def cache_path(cache_dir: Path, name: str, recipe_hash: str) -> Path:
    return cache_dir / f"{re.sub(r'[^A-Za-z0-9.-]+', '_', name)}-{recipe_hash}.tar"


def make_root(root: Path, mirror_url: str) -> None:
    """A Debian root with Python and pip, trusting this machine's CA bundle."""
    if os.geteuid() != 0:
        raise StandinError("debootstrap needs root: run as root, or load the image yourself")
    include = "--include=" + ",".join(BASE_PACKAGES)
    command = ["debootstrap", "--variant=minbase", include, SUITE, str(root), mirror_url]
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        raise StandinError(f"debootstrap failed: {(done.stdout + done.stderr)[-2000:]}")
    shutil.copyfile(CA_BUNDLE, root / CA_BUNDLE.relative_to("/"))
    fit_for_containers(root)


def fit_for_containers(root: Path) -> None:
    """Debian's container settings, an installable Python (as the official image's), and
    no package index or download left in the image."""
    for path, text, mode in CONTAINER_FILES:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
        (root / path).chmod(mode)
    for marker in (root / "usr" / "lib").glob("python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    for link, target in (("python", "python3"), ("pip", "pip3")):
        if not (root / "usr" / "bin" / link).exists():
            (root / "usr" / "bin" / link).symlink_to(target)
    for cached in ("var/cache/apt/archives", "var/lib/apt/lists"):
        shutil.rmtree(root / cached, ignore_errors=True)
        (root / cached / "partial").mkdir(parents=True)


def import_root(docker: Docker, root: Path, name: str, recipe_hash: str) -> None:
    changes = [*BASE_CHANGES, f"LABEL {STANDIN_LABEL}={recipe_hash}"]
    flags = [arg for change in changes for arg in ("--change", change)]
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    with tar.stdout:
        docker.run("import", *flags, "-", name, stdin=tar.stdout.fileno())
    if tar.wait() != 0:
        raise StandinError(f"tar of {root} failed")


def build_base(docker: Docker, name: str, recipe_hash: str, cache_dir: Path) -> None:
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="root-") as scratch:
        root = Path(scratch) / "root"
        try:
            make_root(root, mirror())
            import_root(docker, root, name, recipe_hash)
        finally:
            unmount_under(Path(scratch))


def unmount_under(path: Path) -> None:
    """Unmount what an interrupted debootstrap left mounted in its root (/proc, /sys)."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{path}/")), reverse=True):
        subprocess.run(["umount", "--lazy", point], stdin=subprocess.DEVNULL, check=False)


def remove_leftovers(cache_dir: Path) -> None:
    """What an interrupted run left in the cache: partial tarballs and debootstrap roots."""
    for partial in [*cache_dir.glob("*.partial"), *cache_dir.glob(".tmp-*")]:
        partial.unlink()
    for scratch in cache_dir.glob("root-*"):
        unmount_under(scratch)
        shutil.rmtree(scratch)


def build_service(docker: Docker, name: str, kind: str, base: str, recipe_hash: str) -> None:
    docker.run(
        "build",
        "--build-arg",
        f"BASE={base}",
        "--label",
        f"{STANDIN_LABEL}={recipe_hash}",
        "--tag",
        name,
        str(STANDINS_DIR / kind),
    )


def recipe_hash_of(docker: Docker, kind: str, base: str) -> str:
    if kind == "base":
        return base_recipe_hash(mirror())
    return service_recipe_hash(kind, docker.image_id(base))


def save(docker: Docker, name: str, tarball: Path) -> None:
    """Write the image to the cache, whole or not at all, in place of older recipes'."""
    partial = tarball.with_suffix(".partial")
    docker.run("save", "--output", str(partial), name)
    partial.replace(tarball)
    prune_older(tarball)


def prune_older(tarball: Path) -> None:
    """Delete the cached tarballs of the same image made from other recipes."""
    image = tarball.name.rpartition("-")[0]
    for older in tarball.parent.glob(f"{image}-{'?' * HASH_CHARS}.tar"):
        if older != tarball:
            older.unlink()


def ensure_image(docker: Docker, name: str, base: str, cache_dir: Path) -> bool:
    """Make image `name` exist; whether it is a stand-in."""
    label = docker.label(name)
    if label == "" or (label is None and docker.pull(name)):
        return False
    kind = kind_of(name)
    recipe_hash = recipe_hash_of(docker, kind, base)
    if label == recipe_hash:
        return True
    tarball = cache_path(cache_dir, name, recipe_hash)
    if tarball.exists():
        docker.run("load", "--input", str(tarball))
    else:
        build(docker, name, base, recipe_hash, cache_dir)
        save(docker, name, tarball)
    return True


def build(docker: Docker, name: str, base: str, recipe_hash: str, cache_dir: Path) -> None:
    started = time.monotonic()
    kind = kind_of(name)
    if kind == "base":
        build_base(docker, name, recipe_hash, cache_dir)
    else:
        build_service(docker, name, kind, base, recipe_hash)
    print(f"stand-in {name}: built in {time.monotonic() - started:.0f} s", file=sys.stderr)


def wanted(root: Path = ROOT) -> tuple[str, list[str]]:
    """The Dockerfile's base, and every image to ensure (the base first)."""
    [base] = dockerfile_bases(root / "Dockerfile")
    return base, [base, *(n for n in compose_images(root / "docker-compose.yml") if n != base)]


@contextlib.contextmanager
def cache_lock(cache_dir: Path) -> Iterator[None]:
    """One builder per cache at a time: a second one waits, then loads what the first built."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure_standins(env: Mapping[str, str], cache_dir: Path) -> list[str]:
    """Make every image the Dockerfile and docker-compose.yml name exist in the engine
    `env` names (DOCKER_HOST), building stand-ins where a pull fails. Returns the names
    that are stand-ins.

    `env` is laid over this process's environment (for PATH). Built stand-ins are kept in
    `cache_dir` as tarballs and loaded from there afterwards. Building the base needs root
    and debootstrap; the other stand-ins' builds need the engine's containers to reach the
    Debian mirror. Raises StandinError when an image can be neither pulled nor made.
    """
    docker = Docker({**os.environ, **env})
    docker.answers()
    base, names = wanted()
    with cache_lock(cache_dir):
        remove_leftovers(cache_dir)
        return [name for name in names if ensure_image(docker, name, base, cache_dir)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.standins", description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args(argv)
    try:
        standins = ensure_standins(os.environ, args.cache_dir)
    except (StandinError, subprocess.CalledProcessError, OSError) as exc:
        print(f"standins: {exc}", file=sys.stderr)
        return 1
    for name in standins:
        print(f"{name}: a stand-in built from Debian's packages, not the registry's image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
