"""Write container images as `docker save` archives, which `ctr images import` reads.

No image engine runs on the machines webb is tested on, so the images of the kubelet
tests are packed here: each layer is a plain (uncompressed) tar of a directory tree,
or of what a tree changed against the tree below it (with `.wh.` whiteouts for what it
removed, as the OCI layer format has it); the image config carries the Dockerfile's
ENTRYPOINT, CMD, ENV, USER, WORKDIR and EXPOSE. Standard library only: scripts/setup.sh
runs it before any dependency is installed.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path
from typing import Iterator


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _walk(root: Path) -> Iterator[str]:
    """Relative paths under root, parents before children, sorted (reproducible)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for name in sorted(dirnames) + sorted(filenames):
            yield name if rel == "." else os.path.join(rel, name)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_mode == b.st_mode and a.st_uid == b.st_uid and a.st_gid == b.st_gid
            and (stat.S_ISDIR(a.st_mode) or (a.st_size == b.st_size
                                               and a.st_mtime_ns == b.st_mtime_ns)))


def _add(tar: tarfile.TarFile, root: Path, rel: str, seen: dict[tuple[int, int], str]) -> None:
    path = root / rel
    st = os.lstat(path)
    info = tar.gettarinfo(str(path), arcname=rel)
    info.uname = info.gname = ""
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        key = (st.st_dev, st.st_ino)
        if key in seen:  # a hard link to a file already in this layer
            info.type, info.linkname, info.size = tarfile.LNKTYPE, seen[key], 0
            tar.addfile(info)
            return
        seen[key] = rel
    if info.isreg():
        with open(path, "rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)


def layer_from_tree(root: Path, out: Path, below: Path | None = None) -> None:
    """Tar of `root`; with `below`, only what differs from `below` plus whiteouts."""
    seen: dict[tuple[int, int], str] = {}
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel in _walk(root):
            if below is not None:
                try:
                    if _same(os.lstat(root / rel), os.lstat(below / rel)):
                        continue
                except FileNotFoundError:
                    pass
            _add(tar, root, rel, seen)
        if below is not None:
            for rel in _walk(below):
                if not os.path.lexists(root / rel) and os.path.lexists(root / os.path.dirname(rel) or root):
                    head, name = os.path.split(rel)
                    wh = tarfile.TarInfo(os.path.join(head, ".wh." + name))
                    tar.addfile(wh, io.BytesIO(b""))
    tmp.replace(out)


def write_archive(out: Path, ref: str, layers: list[Path], config: dict) -> None:
    """A `docker save` archive of one image named `ref` (e.g. webb-agent:0.1.0) whose
    filesystem is `layers` (tar files, bottom first) and whose config is `config`
    (the "config" object of the image config: Entrypoint, Cmd, Env, User, ...)."""
    diff_ids = [_sha256_file(p) for p in layers]
    image_config = {
        "architecture": "amd64", "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [{"created_by": "webb scripts/build_images.py"} for _ in layers],
    }
    raw = json.dumps(image_config, sort_keys=True).encode()
    config_name = hashlib.sha256(raw).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [ref],
                 "Layers": [f"{d}/layer.tar" for d in diff_ids]}]
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        add_bytes(config_name, raw)
        for d, p in zip(diff_ids, layers):
            tar.add(str(p), arcname=f"{d}/layer.tar")
        add_bytes("manifest.json", json.dumps(manifest).encode())
    tmp.replace(out)
