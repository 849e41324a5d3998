"""KeylimeImages: the registrar, verifier, tenant and agent images, built with pulumi-docker.

Each image gets a fixed tag ending in a hash of everything that goes into its build (Dockerfile,
build arguments, base image, and for imageSource=local the clone's checked-out commit). The tag is
known before anything is built, so previews are stable, and it changes exactly when the image's
inputs change: that is what re-runs `kind load` and rolls the pods, and nothing else does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
from pathlib import Path

import pulumi
import pulumi_docker as docker

ROOT = Path(__file__).resolve().parent.parent
# Paths handed to pulumi-docker are relative to the project folder, where pulumi runs, so state and
# previews do not depend on where the checkout lives.
IMAGES_DIR = "images"
TAG_PREFIX = "keylime-push"
SERVER_COMPONENTS = ("registrar", "verifier", "tenant")
COMPONENTS = (*SERVER_COMPONENTS, "agent")
CONTROLLER = "controller"
# The Python the controller's tests run with (./venv), so the image runs what was tested.
CONTROLLER_BASE_IMAGE = "docker.io/library/python:3.11.7-slim-bookworm"
CONTROLLER_SOURCE = "controller"


def upstream_image(component: str, version: str) -> str:
    return f"quay.io/keylime/keylime_{component}:v{version}"


def git_head(clone: str) -> str:
    """The commit a clone has checked out, as git resolves it: a worktree's or a submodule's `.git` is a
    file pointing elsewhere, and refs may be loose, packed or in a reftable."""
    resolved = subprocess.run(
        ["git", "-C", clone, "rev-parse", "--verify", "--quiet", "HEAD"], capture_output=True, text=True, check=False
    )
    return resolved.stdout.strip() if resolved.returncode == 0 else "unknown-commit"


def tree_digest(folder: str) -> str:
    """A digest of every file under `folder` (paths and contents, in a fixed order) but bytecode caches:
    the controller image's build context, whose every change must give the image a new tag."""
    digest = hashlib.sha256()
    base = ROOT / folder
    for path in sorted(p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(f"\0{path.relative_to(base).as_posix()}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class BuildSpec:
    """One `docker build`: what it reads decides its tag."""

    repository: str
    version: str
    context: str
    dockerfile: str
    args: tuple[tuple[str, str], ...]
    source_revision: str = ""
    registry: str | None = None
    """Where the image is pushed (the cluster stack); None: it stays in the local Docker for `kind load`."""

    @property
    def tag(self) -> str:
        digest = hashlib.sha256()
        digest.update((ROOT / self.dockerfile).read_bytes())  # an absolute path stays as it is
        for key, value in self.args:
            digest.update(f"\0{key}={value}".encode())
        digest.update(self.source_revision.encode())
        return f"{self.registry or TAG_PREFIX}/{self.repository}:{self.version}-{digest.hexdigest()[:12]}"


@dataclasses.dataclass(frozen=True)
class LocalClones:
    keylime: str
    rust_keylime: str


@dataclasses.dataclass
class KeylimeImagesArgs:
    keylime_version: str
    agent_version: str
    uid: int
    gid: int
    """The user and group the images' keylime user gets: the pods run as them."""
    clones: LocalClones | None = None
    """Build from these clones (imageSource=local) rather than FROM the upstream releases."""
    registry: str | None = None
    """Push the images the clusters run there (clusters the program does not make have no `kind load`); source
    builds stay local. None: nothing is pushed."""


@dataclasses.dataclass(frozen=True)
class BuiltImage:
    """An image's tag, known before it is built, and the build, which whatever loads the tag waits for."""

    ref: str
    build: pulumi.Resource


def build_specs(args: KeylimeImagesArgs) -> dict[str, list[BuildSpec]]:
    """Per component, the builds in order: a source build (imageSource=local), then the thin image."""
    ids = (("KEYLIME_UID", str(args.uid)), ("KEYLIME_GID", str(args.gid)))
    specs: dict[str, list[BuildSpec]] = {}
    for component in COMPONENTS:
        is_agent = component == "agent"
        version = args.agent_version if is_agent else args.keylime_version
        chain: list[BuildSpec] = []
        base = upstream_image(component, version)
        if args.clones is not None:
            clone = args.clones.rust_keylime if is_agent else args.clones.keylime
            source = BuildSpec(
                repository=f"{component}-source",
                version=version,
                context=clone,
                dockerfile=(
                    f"{clone}/docker/release/Dockerfile.fedora" if is_agent else f"{IMAGES_DIR}/server/source.Dockerfile"
                ),
                args=(("VERSION", version),) if is_agent else (("UPSTREAM_IMAGE", base),),
                source_revision=git_head(clone),
            )
            chain.append(source)
            base = source.tag
        folder = f"{IMAGES_DIR}/{'agent' if is_agent else 'server'}"
        chain.append(
            BuildSpec(
                repository=component,
                version=version,
                context=folder,
                dockerfile=f"{folder}/Dockerfile",
                args=(("BASE_IMAGE", base), *ids),
                registry=args.registry,
            )
        )
        specs[component] = chain
    specs[CONTROLLER] = [
        BuildSpec(
            repository=CONTROLLER,
            # The keylime release whose APIs it speaks; its own sources are in the hash.
            version=args.keylime_version,
            context=CONTROLLER_SOURCE,
            dockerfile=f"{IMAGES_DIR}/controller/Dockerfile",
            args=(("BASE_IMAGE", CONTROLLER_BASE_IMAGE), *ids),
            source_revision=tree_digest(CONTROLLER_SOURCE),
            registry=args.registry,
        )
    ]
    return specs


class KeylimeImages(pulumi.ComponentResource):
    """All builds start at once; nothing here waits for a cluster."""

    refs: dict[str, str]
    built: dict[str, docker.Image]

    def __init__(self, name: str, args: KeylimeImagesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keylime:images:KeylimeImages", name, None, opts)
        self.refs = {}
        self.built = {}
        for component, chain in build_specs(args).items():
            previous: docker.Image | None = None
            for spec in chain:
                previous = docker.Image(
                    f"{name}-{spec.repository}",
                    image_name=spec.tag,
                    build=docker.DockerBuildArgs(
                        context=spec.context,
                        dockerfile=spec.dockerfile,
                        args=dict(spec.args),
                    ),
                    # Kind clusters and the VM get images with `kind load` or `ctr import`: no registry. On the
                    # user's clusters they are pulled from imageRegistry, pushed with the local Docker's login.
                    skip_push=spec.registry is None,
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[previous] if previous else []),
                )
            assert previous is not None
            self.refs[component] = chain[-1].tag
            self.built[component] = previous
        self.register_outputs({"refs": self.refs})

    def image(self, component: str) -> BuiltImage:
        return BuiltImage(self.refs[component], self.built[component])
