"""A declared pod's volumes as directories on this machine, and its paths translated to them.

The lab runs each container's process here instead of in Kubernetes: every volume the pod declares
becomes a directory under the lab (ConfigMap and Secret volumes filled from the declared objects, with
the declared file modes and the pod's fsGroup), and a path inside the container becomes the matching
path under that directory, so the processes run on exactly the files the pod would see.

A hostPath volume is the node's own directory (`node` / its path): it outlives the pod, and, as the
kubelet does, the lab neither creates a `Directory` hostPath nor applies fsGroup to one, so whoever
prepares the node must give it to the pod's user.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .declared import Cluster

CONFIG_MAP_DEFAULT_MODE = 0o644
SECRET_DEFAULT_MODE = 0o644
# emptyDir and local-path PersistentVolumes start out world-writable.
WRITABLE_VOLUME_MODE = 0o777


class Pod:
    def __init__(
        self,
        root: Path,
        cluster: Cluster,
        spec: dict[str, Any],
        secret_value: Callable[[str], str] = lambda value: value,
        node: Path | None = None,
        host_paths: Mapping[str, Path] | None = None,
    ):
        """Materialise the volumes of `spec` under `root` (hostPath volumes under `node`, unless `host_paths` maps
        the declared path to what stands in for it on this machine); `secret_value` maps each declared Secret
        value to its real content."""
        self.root = root
        self.spec = spec
        self.volumes: dict[str, Path] = {}
        security = spec.get("securityContext", {})
        self.fs_group: int | None = security.get("fsGroup")
        for volume in spec.get("volumes", []):
            if "hostPath" in volume:
                declared = volume["hostPath"]["path"]
                if host_paths and declared in host_paths:
                    self.volumes[volume["name"]] = host_paths[declared]
                else:
                    self.volumes[volume["name"]] = self._host_path(node, volume["hostPath"])
                continue
            directory = root / volume["name"]
            directory.mkdir(parents=True)
            if "configMap" in volume:
                source = volume["configMap"]
                declared = cluster.get("ConfigMap", source["name"])
                data = {**declared.get("data", {}),
                        **{key: base64.b64decode(value) for key, value in declared.get("binaryData", {}).items()}}
                self._fill(directory, data, source.get("items"), source.get("defaultMode", CONFIG_MAP_DEFAULT_MODE))
            elif "secret" in volume:
                source = volume["secret"]
                declared = cluster.get("Secret", source["secretName"]).get("stringData", {})
                data = {key: secret_value(value) for key, value in declared.items()}
                self._fill(directory, data, source.get("items"), source.get("defaultMode", SECRET_DEFAULT_MODE))
            elif "emptyDir" in volume or "persistentVolumeClaim" in volume:
                directory.chmod(WRITABLE_VOLUME_MODE)
            else:
                raise NotImplementedError(f"volume {volume['name']}: the lab cannot provide {sorted(volume)}")
            self._own(directory)
            self.volumes[volume["name"]] = directory

    @staticmethod
    def _host_path(node: Path | None, source: dict[str, str]) -> Path:
        """The kubelet's hostPath type check: `Directory` must exist; `DirectoryOrCreate` is made root-owned, 0755."""
        if node is None:
            raise ValueError(f"hostPath {source['path']}: the pod is on no node")
        directory = node / source["path"].lstrip("/")
        kind = source.get("type", "")
        if kind == "DirectoryOrCreate":
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        elif kind != "Directory":
            raise NotImplementedError(
                f"hostPath {source['path']}: the lab models types Directory and DirectoryOrCreate, not {kind!r}"
            )
        if not directory.is_dir():
            raise FileNotFoundError(f"hostPath type check failed: {source['path']} is not a directory on the node")
        return directory

    def _fill(self, directory: Path, data: dict[str, str | bytes], items: list[dict] | None, mode: int) -> None:
        for item in items if items is not None else [{"key": key, "path": key} for key in data]:
            target = directory / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            value = data[item["key"]]
            target.write_bytes(value) if isinstance(value, bytes) else target.write_text(value)
            target.chmod(item.get("mode", mode))  # type: ignore[arg-type]  # an item's mode is an int, as in a Kubernetes volume
            self._own(target)

    def _own(self, path: Path) -> None:
        if self.fs_group is not None:
            os.chown(path, 0, self.fs_group)

    def container(self, name: str) -> dict[str, Any]:
        for container in [*self.spec.get("initContainers", []), *self.spec["containers"]]:
            if container["name"] == name:
                return container
        raise KeyError(f"the pod declares no container {name!r}")

    def mounts(self, container: str) -> dict[str, Path]:
        """mountPath -> directory on this machine, for one container."""
        return {
            mount["mountPath"].rstrip("/"): self.volumes[mount["name"]] / mount.get("subPath", "")
            for mount in self.container(container).get("volumeMounts", [])
        }

    def translate(self, container: str, text: str) -> str:
        """`text` with every container path under a mount replaced by the path on this machine."""
        mounts = self.mounts(container)
        pattern = re.compile(
            "|".join(rf"(?<![\w./-]){re.escape(path)}(?=/|$|[^\w.-])" for path in sorted(mounts, key=len, reverse=True))
        )
        return pattern.sub(lambda match: str(mounts[match.group(0)]), text)

    def path(self, container: str, path: str) -> Path:
        """The file on this machine that `path` names inside the container; it must lie on a volume."""
        translated = self.translate(container, path)
        if translated == path:
            raise ValueError(f"{path} is on no volume of container {container!r}")
        return Path(translated)

    def declared_env(self, container: str) -> dict[str, str]:
        """Literal values as declared; downward-API fields as the kubelet fills them on the lab's one node."""
        return {
            item["name"]: item["value"] if "value" in item else self.field(item["valueFrom"])
            for item in self.container(container).get("env", [])
        }

    @staticmethod
    def field(source: dict[str, Any]) -> str:
        path = source.get("fieldRef", {}).get("fieldPath")
        if path != "status.hostIP":
            raise NotImplementedError(f"the lab fills no environment from {source}")
        return "127.0.0.1"

    def env(self, container: str) -> dict[str, str]:
        """The container's declared environment, its paths translated."""
        return {name: self.translate(container, value) for name, value in self.declared_env(container).items()}

    def user(self, container: str) -> tuple[int, int, list[int]]:
        """(uid, gid, supplementary groups) the container runs as."""
        pod = self.spec.get("securityContext", {})
        own = self.container(container).get("securityContext", {})
        uid, gid = own.get("runAsUser", pod.get("runAsUser", 0)), own.get("runAsGroup", pod.get("runAsGroup", 0))
        groups = [self.fs_group] if self.fs_group is not None else []
        return uid, gid, [*groups, *pod.get("supplementalGroups", [])]

    def as_user(self, container: str, argv: list[str]) -> list[str]:
        """`argv` run as the container's user and groups, as the kubelet would start it."""
        uid, gid, groups = self.user(container)
        group_option = f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", group_option, "--", *argv]
