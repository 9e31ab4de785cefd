"""devtools/standins.py and the stand-ins' entrypoints, without a Docker engine: which images
the project names and which recipe serves each, the mirror, the cache keys, and the
entrypoints' handling of their arguments and of the official images' environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import standins

ROOT = Path(__file__).resolve().parent.parent
RABBITMQ_ENTRYPOINT = ROOT / "deploy" / "standins" / "rabbitmq" / "docker-entrypoint.sh"
POSTGRES_ENTRYPOINT = ROOT / "deploy" / "standins" / "postgres" / "docker-entrypoint.sh"


def test_the_images_to_ensure_are_the_dockerfile_s_base_then_the_compose_file_s() -> None:
    base, names = standins.wanted()
    assert base.startswith("python:3.11.")
    assert names[0] == base
    assert {standins.kind_of(name) for name in names} == {"base", "rabbitmq", "postgres"}
    assert "aifi-gateway:local" not in names, "built by compose, never pulled"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("python:3.11.14-slim-bookworm", "base"),
        ("docker.io/library/rabbitmq:4.2.9-management", "rabbitmq"),
        ("postgres:17.6", "postgres"),
        ("postgres", "postgres"),
    ],
)
def test_each_image_has_its_recipe(name: str, kind: str) -> None:
    assert standins.kind_of(name) == kind


def test_an_image_without_a_recipe_is_refused_by_name() -> None:
    with pytest.raises(standins.StandinError, match="redis:7"):
        standins.kind_of("redis:7")


def test_stages_the_dockerfile_names_itself_are_no_images(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM python:3.11.14-slim AS build\nRUN true\nFROM build\n")
    assert standins.dockerfile_bases(dockerfile) == ["python:3.11.14-slim"]


def test_the_mirror_is_the_one_apt_uses_for_the_suite(tmp_path: Path) -> None:
    (tmp_path / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert standins.mirror(tmp_path) == "http://mirror.example/debian"
    assert standins.mirror(tmp_path / "none") == standins.DEFAULT_MIRROR


def test_a_stand_in_is_rebuilt_when_its_base_changes() -> None:
    first = standins.service_recipe_hash("rabbitmq", "sha256:aaaa")
    assert first == standins.service_recipe_hash("rabbitmq", "sha256:aaaa")
    assert first != standins.service_recipe_hash("rabbitmq", "sha256:bbbb")
    assert first != standins.service_recipe_hash("postgres", "sha256:aaaa")


def test_the_cache_file_names_the_image_and_its_recipe(tmp_path: Path) -> None:
    path = standins.cache_path(tmp_path, "rabbitmq:4.2.9-management", "0123")
    assert path == tmp_path / "rabbitmq_4.2.9-management-0123.tar"


def entrypoint(
    script: Path, args: list[str], env: dict[str, str], user: str | None = None
) -> subprocess.CompletedProcess[str]:
    run_as = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"] if user else []
    path = {"PATH": os.environ["PATH"], "HOME": "/nonexistent"}
    return subprocess.run(
        [*run_as, "bash", str(script), *args],
        env=path | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def pgdata() -> Iterator[Path]:
    """An empty PGDATA the postgres user can reach (the suite's tmp_path is root's only)."""
    with tempfile.TemporaryDirectory(prefix="standin-pg-") as scratch:
        os.chmod(scratch, 0o777)
        yield Path(scratch) / "data"


@pytest.mark.parametrize("args", [["postgres"], ["-c", "fsync=off"], []])
def test_postgres_refuses_to_initialise_without_a_password(pgdata: Path, args: list[str]) -> None:
    done = entrypoint(POSTGRES_ENTRYPOINT, args, {"PGDATA": str(pgdata)}, user="postgres")
    assert done.returncode == 1
    assert "superuser password is not specified" in done.stderr
    assert not pgdata.exists()


def test_postgres_runs_any_other_command_as_given(pgdata: Path) -> None:
    done = entrypoint(POSTGRES_ENTRYPOINT, ["echo", "as", "given"], {"PGDATA": str(pgdata)})
    assert (done.returncode, done.stdout) == (0, "as given\n")


def test_rabbitmq_runs_any_other_command_as_given() -> None:
    done = entrypoint(RABBITMQ_ENTRYPOINT, ["echo", "as", "given"], {})
    assert (done.returncode, done.stdout) == (0, "as given\n")


def rabbitmq_prepare(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The entrypoint's preparation of conf.d and the cookie, on folders of the test's own."""
    steps = (
        f"source {RABBITMQ_ENTRYPOINT}; DATA={tmp_path}/data; CONF_D={tmp_path}/conf.d;"
        f" EFFECTIVE={tmp_path}/effective.d; DEFINITIONS={tmp_path}/definitions.json;"
        ' mkdir -p "$DATA"; write_cookie; copy_conf_d;'
        " write_environment"
    )
    return subprocess.run(
        ["bash", "-c", steps],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_rabbitmq_takes_the_default_user_and_the_cookie_from_the_environment(
    tmp_path: Path,
) -> None:
    (tmp_path / "conf.d").mkdir()
    env = {
        "RABBITMQ_DEFAULT_USER": "aifi",
        "RABBITMQ_DEFAULT_PASS": "s3cret",
        "RABBITMQ_ERLANG_COOKIE": "the-cookie",
    }
    rabbitmq_prepare(tmp_path, env)
    conf = (tmp_path / "effective.d" / "90-environment.conf").read_text()
    assert conf.splitlines() == ["default_user = aifi", "default_pass = s3cret"]
    cookie = tmp_path / "data" / ".erlang.cookie"
    assert cookie.read_text() == "the-cookie"
    assert cookie.stat().st_mode & 0o777 == 0o600


def test_rabbitmq_reads_conf_d_less_the_keys_3_10_cannot(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    cluster = ROOT / "deploy" / "rabbitmq-cluster.conf"
    (tmp_path / "conf.d" / "30-cluster.conf").write_text(cluster.read_text())
    done = rabbitmq_prepare(tmp_path, {})
    kept = (tmp_path / "effective.d" / "30-cluster.conf").read_text()
    assert "cluster_formation.classic_config.nodes.3 = rabbit@rabbitmq-3" in kept
    assert "queue_leader_locator = balanced" in kept
    for key in ("default_queue_type", "quorum_queue.initial_cluster_size"):
        assert f"\n{key}" not in kept
        assert key in done.stderr
    assert (tmp_path / "data" / ".erlang.cookie").stat().st_size > 0


def test_rabbitmq_4_s_default_queue_type_becomes_the_default_vhost_s(tmp_path: Path) -> None:
    """3.10 knows a default queue type per virtual host only: the default one is made by
    definitions, with that type and the default user, which definitions then also make."""
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "30-cluster.conf").write_text("default_queue_type = quorum\n")
    env = {"RABBITMQ_DEFAULT_USER": "aifi", "RABBITMQ_DEFAULT_PASS": 'p"w'}
    rabbitmq_prepare(tmp_path, env)
    definitions = json.loads((tmp_path / "definitions.json").read_text())
    assert definitions["vhosts"][0]["name"] == "/"
    assert definitions["vhosts"][0]["default_queue_type"] == "quorum"
    assert definitions["users"][0] | {"tags": []} == {"name": "aifi", "password": 'p"w', "tags": []}
    assert definitions["permissions"][0]["user"] == "aifi"
    conf = (tmp_path / "effective.d" / "90-environment.conf").read_text()
    assert f"load_definitions = {tmp_path}/definitions.json" in conf.splitlines()


def test_rabbitmq_without_default_queue_type_makes_its_default_user_itself(
    tmp_path: Path,
) -> None:
    (tmp_path / "conf.d").mkdir()
    rabbitmq_prepare(tmp_path, {"RABBITMQ_DEFAULT_USER": "aifi", "RABBITMQ_DEFAULT_PASS": "pw"})
    assert not (tmp_path / "definitions.json").exists()
    conf = (tmp_path / "effective.d" / "90-environment.conf").read_text()
    assert "load_definitions" not in conf


def test_a_new_recipe_s_tarball_replaces_the_older_ones_of_that_image_only(
    tmp_path: Path,
) -> None:
    def cached(name: str, recipe: str) -> Path:
        path = standins.cache_path(tmp_path, name, standins.digest(recipe.encode()))
        path.touch()
        return path

    older = cached("postgres:17.6", "old")
    others = [cached("postgres:17", "old"), cached("rabbitmq:4.2.9-management", "old")]
    newer = cached("postgres:17.6", "new")
    standins.prune_older(newer)
    assert not older.exists()
    assert newer.exists()
    assert all(other.exists() for other in others)


def test_without_an_engine_the_cli_says_so_before_building_anything(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "DOCKER_HOST": f"unix://{tmp_path}/none.sock"}
    done = subprocess.run(
        [sys.executable, "-m", "devtools.standins", "--cache-dir", str(tmp_path / "cache")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert f"no Docker engine answers at unix://{tmp_path}/none.sock" in done.stderr
    assert not list((tmp_path / "cache").glob("*.tar"))


def test_what_an_interrupted_run_left_in_the_cache_is_removed(tmp_path: Path) -> None:
    kept = standins.cache_path(tmp_path, "postgres:17.6", "0" * standins.HASH_CHARS)
    kept.touch()
    (tmp_path / "root-abc" / "root" / "usr").mkdir(parents=True)
    (tmp_path / f"{kept.stem}.partial").touch()
    (tmp_path / ".tmp-postgres.partial123").touch()
    standins.remove_leftovers(tmp_path)
    assert sorted(tmp_path.iterdir()) == [kept]


def mounted_under(path: Path) -> list[str]:
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    return [line.split()[1] for line in mounts if line.split()[1].startswith(f"{path}/")]


@pytest.fixture
def leftover_root(tmp_path: Path) -> Iterator[Path]:
    """A debootstrap root left with a file system mounted in it, unmounted afterwards."""
    proc = tmp_path / "root-abc" / "root" / "proc"
    proc.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "leftover", str(proc)], check=True)
    (proc / "kept-by-the-mount").write_text("x")
    yield tmp_path
    for point in mounted_under(tmp_path):
        subprocess.run(["umount", "--lazy", point], check=False)


def test_a_leftover_root_is_unmounted_before_it_is_removed(leftover_root: Path) -> None:
    standins.remove_leftovers(leftover_root)
    assert mounted_under(leftover_root) == []
    assert not (leftover_root / "root-abc").exists()


def test_a_debootstrap_root_is_fit_for_containers(tmp_path: Path) -> None:
    for path in (
        "usr/lib/python3.11/EXTERNALLY-MANAGED",
        "usr/bin/python3",
        "usr/bin/pip3",
        "var/cache/apt/archives/python3_3.11.2-1_amd64.deb",
        "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease",
    ):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()
    standins.fit_for_containers(tmp_path)
    assert not (tmp_path / "usr/lib/python3.11/EXTERNALLY-MANAGED").exists()
    assert os.readlink(tmp_path / "usr/bin/python") == "python3"
    assert os.readlink(tmp_path / "usr/bin/pip") == "pip3"
    assert [p.name for p in (tmp_path / "var/cache/apt/archives").iterdir()] == ["partial"]
    assert [p.name for p in (tmp_path / "var/lib/apt/lists").iterdir()] == ["partial"]
    assert (tmp_path / "usr/sbin/policy-rc.d").stat().st_mode & 0o777 == 0o755
    assert "archives/*.deb" in (tmp_path / "etc/apt/apt.conf.d/docker-clean").read_text()
