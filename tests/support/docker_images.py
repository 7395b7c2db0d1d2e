"""The step image, built without any registry and cached between runs of one machine.

Three cached stages, each skipped when its inputs are unchanged:

1. **Base image** ``coreexec-base:bookworm-<hash>``: ``debootstrap --variant=minbase
   --include=python3,python3-venv bookworm`` from the mirror apt uses here, trimmed,
   saved as a tarball under ``$COREEXEC_CACHE_DIR/base`` and ``docker import``-ed.
2. **Wheels**: the dependencies of coreexec with its ``docker``, ``flower`` and
   ``kubernetes`` extras,
   resolved for the *image's* Python (bookworm's 3.11.2 is older than the host's, and
   e.g. redis needs async-timeout below 3.11.3, which a host-side resolution leaves
   out), and a wheel of this checkout, cached by their inputs under ``wheels/``.
3. **Step image** ``coreexec-step:<hash>`` from ``workers/Dockerfile``, built FROM the
   base with those wheels only (containers cannot reach the package index); its tag is
   the hash of the base image id, the wheel set and the Dockerfile.

A lock file keeps concurrent test runs from building the same thing twice.
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
from docker.models.images import Image
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support.docker_engine import CACHE_DIR, SHARED_PATHS, locked

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_REPOSITORY = "coreexec-base"
STEP_REPOSITORY = "coreexec-step"
IMAGE_EXTRAS = ("docker", "flower", "kubernetes")
ROLE_LABEL = "org.coreexec.image"
# What the wheel of this checkout is built from (and what its cache key hashes).
_SOURCE_PATHS = ("pyproject.toml", "coreexec", "celery_app", "workers")
# Removed from the debootstrapped tree: package caches and docs nobody reads in a step.
_TRIM = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
         "usr/share/locale", "usr/share/info")  # fmt: skip
_MARKERS_SCRIPT = """
import json, os, platform, sys
print(json.dumps({
    "implementation_name": sys.implementation.name,
    "implementation_version": platform.python_version(),
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_python_implementation": platform.python_implementation(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "python_version": ".".join(platform.python_version_tuple()[:2]),
    "sys_platform": sys.platform,
    "glibc": os.confstr("CS_GNU_LIBC_VERSION").split()[1],
}))
"""


class ImageBuildError(RuntimeError):
    """A stage of the image build failed; the message names the stage and its output."""


@dataclass(frozen=True)
class StepImage:
    """A built step image: its tag, its id and the base it was built FROM."""

    tag: str
    id: str
    base_tag: str


@dataclass(frozen=True)
class BaseSpec:
    """What the base image is debootstrapped from."""

    suite: str = "bookworm"
    variant: str = "minbase"
    include: tuple[str, ...] = ("python3", "python3-venv")
    mirror: str = ""

    @property
    def tag(self) -> str:
        key = _digest(json.dumps([self.suite, self.variant, self.include, self.mirror, _TRIM]))
        return f"{BASE_REPOSITORY}:{self.suite}-{key[:12]}"


# ---------------------------------------------------------------------- helpers


def _digest(*parts: str | bytes) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(part.encode() if isinstance(part, str) else part)
        sha.update(b"\0")
    return sha.hexdigest()


def _run(argv: list[str], what: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-4000:]
        raise ImageBuildError(f"{what} failed (exit {done.returncode}): {' '.join(argv)}\n{output}")
    return str(done.stdout)


def _image(client: docker.DockerClient, tag: str) -> Image | None:
    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (``COREEXEC_DEBIAN_MIRROR`` overrides)."""
    override = os.environ.get("COREEXEC_DEBIAN_MIRROR")
    if override:
        return override
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for line in path.read_text().splitlines():
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if uri.rstrip("/").endswith("/debian"):
                        return uri
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            fields = line.split()
            if (
                fields[:1] == ["deb"]
                and fields[-3:-2]
                and fields[1].rstrip("/").endswith("/debian")
            ):
                return fields[1]
    return "http://deb.debian.org/debian"


# ---------------------------------------------------------------------- 1. base image


def ensure_base_image(client: docker.DockerClient, spec: BaseSpec, cache_dir: Path) -> str:
    """The tag of the base image, importing (and first debootstrapping) it if missing.

    It is also tagged ``coreexec-base:<suite>``, workers/Dockerfile's default base.
    """
    repository, _, tag = spec.tag.partition(":")
    image = _image(client, spec.tag)
    if image is None:
        tarball = base_tarball(spec.tag, cache_dir)
        if not tarball.exists():
            _debootstrap_tarball(spec, tarball)
        client.api.import_image_from_file(
            str(tarball), repository=repository, tag=tag, changes=[f"LABEL {ROLE_LABEL}=base"]
        )
        image = _image(client, spec.tag)
        if image is None:
            raise ImageBuildError(f"docker import of {tarball} did not create {spec.tag}")
    alias = f"{repository}:{spec.suite}"
    if alias not in image.tags:
        image.tag(repository, spec.suite)
    return spec.tag


def base_tarball(base_tag: str, cache_dir: Path = CACHE_DIR) -> Path:
    """Where the root filesystem of the base image ``base_tag`` is cached."""
    return cache_dir / "base" / (base_tag.replace(":", "_") + ".tar")


def _debootstrap_tarball(spec: BaseSpec, tarball: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed; run `bash scripts/setup.sh`")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=tarball.parent) as work:
        rootfs = Path(work) / "rootfs"
        _run(
            ["debootstrap", f"--variant={spec.variant}", f"--include={','.join(spec.include)}",
             spec.suite, str(rootfs), spec.mirror or debian_mirror()],
            f"debootstrap of {spec.suite}",
        )  # fmt: skip
        for relative in _TRIM:
            target = rootfs / relative
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        partial = Path(work) / "rootfs.tar"
        _run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], "tar of the base rootfs")
        partial.rename(tarball)


def marker_environment(
    client: docker.DockerClient, base_tag: str, cache_dir: Path
) -> dict[str, str]:
    """The base image's environment markers (PEP 508) and glibc, cached per image id."""
    image = client.images.get(base_tag)
    cached = cache_dir / "base" / f"markers-{image.id.split(':')[-1][:16]}.json"
    if cached.exists():
        loaded: dict[str, str] = json.loads(cached.read_text())
        return loaded
    output = client.containers.run(
        base_tag,
        ["python3", "-c", _MARKERS_SCRIPT],
        network_mode="none",
        remove=True,
        labels={ROLE_LABEL: "probe"},
    )
    markers: dict[str, str] = json.loads(output)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(markers, sort_keys=True))
    return markers


# ---------------------------------------------------------------------- 2. wheels


def requirement_roots(pyproject: Path = REPO_ROOT / "pyproject.toml") -> list[str]:
    """coreexec's dependencies with the extras the image installs."""
    project = tomllib.loads(pyproject.read_text())["project"]
    roots = list(project["dependencies"])
    for extra in IMAGE_EXTRAS:
        roots += project["optional-dependencies"][extra]
    return roots


def _platform_tags(markers: dict[str, str]) -> list[str]:
    machine = markers["platform_machine"]
    glibc_minor = int(markers["glibc"].split(".")[1])
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(glibc_minor, 4, -1)]
    return [*tags, f"manylinux2014_{machine}", f"manylinux2010_{machine}",
            f"manylinux1_{machine}", f"linux_{machine}"]  # fmt: skip


def _pip_download(requirements: Iterable[str], dest: Path, markers: dict[str, str]) -> None:
    version = markers["python_full_version"]
    abi = "cp" + "".join(version.split(".")[:2])
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--dest", str(dest), "--only-binary=:all:", "--python-version", version,
            "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none"]  # fmt: skip
    for tag in _platform_tags(markers):
        argv += ["--platform", tag]
    _run([*argv, *requirements], "pip download of the image's wheels")


def _wheel_metadata(wheel: Path) -> tuple[str, Version, list[str]]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(
            n for n in archive.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1
        )
        message = email.parser.Parser().parsestr(archive.read(name).decode())
    requires = message.get_all("Requires-Dist") or []
    return canonicalize_name(message["Name"]), Version(message["Version"]), requires


def unresolved(wheel_dir: Path, roots: Iterable[str], markers: dict[str, str]) -> list[str]:
    """Requirements of ``roots`` (transitively, for ``markers``) no wheel in the dir meets.

    ``pip download --python-version`` picks wheels for the target but evaluates markers
    such as ``python_full_version < "3.11.3"`` for the host, so this walks the wheels'
    metadata with the image's own markers.
    """
    found = {name: (version, requires) for name, version, requires in
             map(_wheel_metadata, wheel_dir.glob("*.whl"))}  # fmt: skip
    todo = [Requirement(root) for root in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    missing: list[str] = []
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        if name not in found or not requirement.specifier.contains(
            found[name][0], prereleases=True
        ):
            requirement.marker = None
            missing.append(str(requirement))
            continue
        for line in found[name][1]:
            dependency = Requirement(line)
            extras = requirement.extras | {""}
            marker = dependency.marker
            if marker is None or any(marker.evaluate({**markers, "extra": e}) for e in extras):
                todo.append(dependency)
    return sorted(missing)


def _wanted(roots: Iterable[str], markers: dict[str, str]) -> list[str]:
    wanted = []
    for root in roots:
        requirement = Requirement(root)
        if requirement.marker is None or requirement.marker.evaluate({**markers, "extra": ""}):
            wanted.append(root)
    return wanted


def ensure_dependency_wheels(roots: list[str], markers: dict[str, str], cache_dir: Path) -> Path:
    """A directory of wheels that meets ``roots`` for the image's Python, cached by inputs."""
    constraints = os.environ.get("PIP_CONSTRAINT", "/etc/xdg/pip/constraints.txt")
    pinned = Path(constraints).read_text() if Path(constraints).is_file() else ""
    key = _digest(json.dumps([roots, markers], sort_keys=True), pinned)
    dest = cache_dir / "wheels" / f"deps-{key[:16]}"
    if (dest / ".complete").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    wanted = _wanted(roots, markers)
    _pip_download(wanted, dest, markers)
    for _ in range(5):
        missing = unresolved(dest, wanted, markers)
        if not missing:
            (dest / ".complete").write_text(key)
            return dest
        _pip_download(missing, dest, markers)
    raise ImageBuildError(f"no wheel set in {dest} meets {missing} for Python "
                          f"{markers['python_full_version']}")  # fmt: skip


def source_hash(repo: Path = REPO_ROOT) -> str:
    """Hash of what the coreexec wheel is built from."""
    sha = hashlib.sha256()
    for top in _SOURCE_PATHS:
        paths = [repo / top] if (repo / top).is_file() else sorted((repo / top).rglob("*"))
        for path in paths:
            if path.is_file() and "__pycache__" not in path.parts:
                sha.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes())
    return sha.hexdigest()


def ensure_coreexec_wheel(cache_dir: Path, repo: Path = REPO_ROOT) -> Path:
    """A directory holding the wheel of this checkout, cached by its source hash."""
    dest = cache_dir / "wheels" / f"coreexec-{source_hash(repo)[:16]}"
    if (dest / ".complete").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="coreexec-src-") as work:
        # A copy, so no build/ directory lands in the checkout (stale files in it would
        # end up in later wheels).
        source = Path(work) / "src"
        for top in _SOURCE_PATHS:
            if (repo / top).is_file():
                source.mkdir(exist_ok=True)
                shutil.copy2(repo / top, source / top)
            else:
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(repo / top, source / top, ignore=ignore)
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
              "--disable-pip-version-check", "--wheel-dir", str(Path(work) / "out"),
              str(source)], "pip wheel of coreexec")  # fmt: skip
        dest.mkdir(parents=True)
        for wheel in (Path(work) / "out").glob("*.whl"):
            shutil.copy2(wheel, dest / wheel.name)
    (dest / ".complete").write_text("")
    return dest


def wheel_set_hash(*directories: Path) -> str:
    """Hash of the names and contents of every wheel in ``directories``."""
    wheels = sorted(w for d in directories for w in d.glob("*.whl"))
    return _digest(*(part for w in wheels for part in (w.name, w.read_bytes())))


# ---------------------------------------------------------------------- 3. step image


def ensure_step_image(
    client: docker.DockerClient,
    *,
    cache_dir: Path = CACHE_DIR,
    repo: Path = REPO_ROOT,
    spec: BaseSpec | None = None,
    wheels_out: Path | None = None,
) -> StepImage:
    """The step image of this checkout, building only the stages whose inputs changed.

    ``wheels_out``, if given, receives a copy of the wheels (``deps/``, ``coreexec/``).
    """
    spec = spec or BaseSpec()
    with locked(cache_dir / "images.lock"):
        base_tag = ensure_base_image(client, spec, cache_dir)
        markers = marker_environment(client, base_tag, cache_dir)
        deps = ensure_dependency_wheels(
            requirement_roots(repo / "pyproject.toml"), markers, cache_dir
        )
        own = ensure_coreexec_wheel(cache_dir, repo)
        dockerfile = (repo / "workers" / "Dockerfile").read_bytes()
        base_id = client.images.get(base_tag).id
        key = _digest(base_id, wheel_set_hash(deps, own), dockerfile)
        tag = f"{STEP_REPOSITORY}:{key[:16]}"
        image = _image(client, tag) or _build_step_image(
            client, tag, base_tag, deps, own, dockerfile
        )
        if wheels_out is not None:
            _copy_wheels(deps, own, wheels_out)
        return StepImage(tag=tag, id=str(image.id), base_tag=base_tag)


def _copy_wheels(deps: Path, own: Path, dest: Path) -> None:
    """The wheels in the layout workers/Dockerfile reads: ``deps/`` and ``coreexec/``."""
    for source, name in ((deps, "deps"), (own, "coreexec")):
        shutil.rmtree(dest / name, ignore_errors=True)
        shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns(".*"))


def _build_step_image(
    client: docker.DockerClient, tag: str, base_tag: str, deps: Path, own: Path, dockerfile: bytes
) -> Image:
    with tempfile.TemporaryDirectory(prefix="coreexec-image-") as work:
        context = Path(work)
        (context / "workers").mkdir()
        (context / "workers" / "Dockerfile").write_bytes(dockerfile)
        _copy_wheels(deps, own, context / "wheels")
        try:
            image, _logs = client.images.build(
                path=str(context),
                dockerfile="workers/Dockerfile",
                tag=tag,
                buildargs={"BASE_IMAGE": base_tag, "WHEELS": "wheels"},
                labels={ROLE_LABEL: "step"},
                rm=True,
                forcerm=True,
            )
        except docker.errors.BuildError as exc:
            lines = "".join(
                str(entry.get("stream", entry.get("error", ""))) for entry in exc.build_log
            )
            raise ImageBuildError(f"docker build of {tag} failed: {exc}\n{lines[-4000:]}") from exc
    return image


# ---------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.docker_images",
        description="Build (or find cached) the base and step images on a Docker engine.",
    )
    default_host = os.environ.get("DOCKER_HOST", SHARED_PATHS.base_url)
    parser.add_argument("--host", default=default_host,
                        help="engine URL (default: $DOCKER_HOST or the shared one)")  # fmt: skip
    parser.add_argument("--tag", action="append", default=[],
                        help="also tag the step image so, e.g. coreexec-worker:latest")  # fmt: skip
    parser.add_argument("--wheels-out", type=Path, default=None,
                        help="also copy the wheels there (deps/, coreexec/), the layout "
                        "workers/Dockerfile builds from")  # fmt: skip
    args = parser.parse_args(argv)
    client = docker.DockerClient(base_url=args.host, timeout=600)
    try:
        image = ensure_step_image(client, wheels_out=args.wheels_out)
        for extra in args.tag:
            repository, _, name = extra.partition(":")
            client.images.get(image.id).tag(repository, name or "latest")
    finally:
        client.close()
    print(image.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
