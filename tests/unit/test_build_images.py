"""The offline image builder of the kubelet tests (scripts/build_images.py,
scripts/oci_archive.py): layers and whiteouts, the `docker save` archive containerd
imports, and Docker's .dockerignore rules as the images' build contexts use them."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import build_images  # noqa: E402
from oci_archive import layer_from_tree, write_archive  # noqa: E402


def members(tar: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(tar) as t:
        return {m.name: m for m in t.getmembers()}


def test_layer_of_a_tree_and_of_its_changes(tmp_path):
    base, top = tmp_path / "base", tmp_path / "top"
    for d in (base, top):
        (d / "etc").mkdir(parents=True)
        (d / "etc/keep").write_text("same")
        os.utime(d / "etc/keep", ns=(10**18, 10**18))
    (base / "etc/gone").write_text("x")
    (base / "etc/changed").write_text("old")
    (top / "etc/changed").write_text("new!")
    (top / "bin").mkdir()
    (top / "bin/tool").write_text("#!/bin/sh\n")
    os.link(top / "bin/tool", top / "bin/alias")
    (top / "bin/link").symlink_to("tool")

    full = tmp_path / "full.tar"
    layer_from_tree(base, full)
    assert set(members(full)) == {"etc", "etc/keep", "etc/gone", "etc/changed"}

    diff = tmp_path / "diff.tar"
    layer_from_tree(top, diff, below=base)
    m = members(diff)
    assert "etc/keep" not in m                     # unchanged: left to the layer below
    assert "etc/changed" in m and "bin/tool" in m
    assert m["etc/.wh.gone"].size == 0             # removed: an OCI whiteout
    # a hard link: the first name carries the data, the other links to it
    assert m["bin/alias"].isreg() and m["bin/tool"].islnk() and m["bin/tool"].linkname == "bin/alias"
    assert m["bin/link"].issym() and m["bin/link"].linkname == "tool"


def test_archive_is_what_ctr_import_reads(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t/pause").write_bytes(b"\x7fELF")
    layer = tmp_path / "l.tar"
    layer_from_tree(tmp_path / "t", layer)
    out = tmp_path / "img.tar"
    write_archive(out, "webb.test/pause:3.4", [layer], {"Entrypoint": ["/pause"]})
    with tarfile.open(out) as t:
        manifest = json.load(t.extractfile("manifest.json"))
        assert manifest[0]["RepoTags"] == ["webb.test/pause:3.4"]
        config = json.load(t.extractfile(manifest[0]["Config"]))
        digest = hashlib.sha256(layer.read_bytes()).hexdigest()
        assert manifest[0]["Layers"] == [f"{digest}/layer.tar"]
        assert config["rootfs"]["diff_ids"] == [f"sha256:{digest}"]
        assert config["config"]["Entrypoint"] == ["/pause"]
        assert t.extractfile(f"{digest}/layer.tar").read() == layer.read_bytes()


def test_dockerignore_rules_as_docker_has_them():
    patterns = build_images.ignore_patterns(ROOT / "images/agent/Dockerfile")
    ign = lambda p: build_images.ignored(p, patterns)  # noqa: E731
    assert ign("webb/api/flow") and ign("webb/api/flow/flow_pb2.py")  # generated stubs
    assert not ign("webb/api/__init__.py")   # the package itself stays (let back in by !)
    assert ign("services/agent/__pycache__") and ign("__pycache__")
    assert ign(".venv") and not ign("webb/regex.py")
    # Docker cleans patterns: a trailing slash does not restrict one to directories
    assert build_images.ignored("a/b.txt", ["a/*/"])
    # the last matching pattern decides
    assert not build_images.ignored("a/keep", ["a/*", "!a/keep"])
    assert build_images.ignored("a/keep", ["!a/keep", "a/*"])
    files = build_images.context_files("webb", patterns)
    assert "webb/api/__init__.py" in files and not any("__pycache__" in f for f in files)


def test_dockerfile_instructions_are_all_supported():
    """Every instruction of the images' Dockerfiles is one the offline builder carries out."""
    supported = {"FROM", "RUN", "COPY", "ENV", "ARG", "USER", "ENTRYPOINT", "CMD", "EXPOSE",
                 "WORKDIR", "LABEL"}
    for c in build_images.COMPONENTS:
        df = ROOT / "images" / c / "Dockerfile"
        used = {ins for ins, _ in build_images.instructions(df)}
        assert used <= supported, (c, used - supported)
        bases = {a.split()[0] for ins, a in build_images.instructions(df) if ins == "FROM"}
        assert bases <= set(build_images.BASES), (c, bases)


def test_gc_keeps_recent_archives_of_other_checkouts(tmp_path, monkeypatch):
    """Archives beyond the newest ARCHIVES_KEPT go only once unused for an hour: another
    checkout may have just built them for its own tests."""
    monkeypatch.setattr(build_images, "CACHE", tmp_path)
    now = 1_000_000_000.0
    ages = {"agent-a.tar": 10, "agent-b.tar": 20, "agent-c.tar": 30,
            "agent-d.tar": build_images.ARCHIVES_RECENT_S + 5,
            "agent-e.tar": build_images.ARCHIVES_RECENT_S + 50, "relay-x.tar": 7200}
    for name, age in ages.items():
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (now - age, now - age))
    build_images.gc(["agent", "relay"], set(), now=now)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == [
        "agent-a.tar", "agent-b.tar", "agent-c.tar", "relay-x.tar"]
