#!/usr/bin/env python3
"""Build the container images of the kubelet tests offline, cached per machine.

No registry can be pulled from and no image engine runs here, so:
- `pause`: the static pause binary that scripts/build_kube.sh compiles from the
  Kubernetes tree's build/pause/linux/pause.c, alone in one layer;
- `busybox`: Debian's busybox-static with its applets linked, for pods that only need
  a shell, ping and nc;
- `webb-agent`, `webb-relay`, `webb-ui`, `webb-metrics`: images/*/Dockerfile's own
  instructions carried out on a Debian root filesystem: FROM takes a
  `debootstrap --variant=minbase` bookworm tree (python:3.11-slim: the same with
  Debian's python3 3.11 and python3-venv), RUN runs in a chroot with the host's
  network, COPY reads the repository with the Dockerfile's .dockerignore, and ENV,
  USER, ENTRYPOINT, CMD, EXPOSE become the image config. Two layers per image: the base
  tree, and what the instructions changed.

Every image is a `docker save` archive in $WEBB_IMAGE_CACHE (/var/cache/webb/images),
named by a key over everything that goes into it (recipe, base, instructions, the
bytes of every file COPY reads), so an unchanged tree is not built again and a changed
one is. RUN results are kept as snapshots by the same keys, like Docker's build cache:
after a change to webb's code only the steps from the first COPY of it on run again.

    build_images.py [--only NAME ...]   # build what is missing; print {name: archive}
"""
from __future__ import annotations

import argparse
import fcntl
import fnmatch
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from oci_archive import layer_from_tree, write_archive  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("WEBB_IMAGE_CACHE", "/var/cache/webb/images"))
KUBE_BIN = Path(os.environ.get("WEBB_KUBE_BIN", "/var/cache/webb/kube-1.20.2/bin"))
MIRROR = os.environ.get("WEBB_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# Bumped whenever how images are made changes (not what goes into them: that is keyed).
RECIPE = "2"
SUITE = "bookworm"
# What each FROM of the Dockerfiles becomes: debootstrap's packages beyond minbase.
BASES = {
    "debian:bookworm-slim": [],
    "python:3.11-slim": ["python3", "python3-venv"],
}
# The -slim images' dpkg and apt settings (docker-debian-artifacts, bookworm).
SLIM_DPKG = """path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*
"""
_CLEAN = ('"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
          '/var/cache/apt/*.bin || true"')
SLIM_APT = {
    "docker-clean": (f"DPkg::Post-Invoke {{ {_CLEAN}; }};\nAPT::Update::Post-Invoke {{ {_CLEAN}; }};\n"
                     'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'),
    "docker-no-languages": 'Acquire::Languages "none";\n',
    "docker-gzip-indexes": 'Acquire::GzipIndexes "true";\n',
    "docker-autoremove-suggests": 'Apt::AutoRemove::SuggestsImportant "false";\n',
}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COMPONENTS = ["agent", "relay", "ui", "metrics"]
SMALL = {"pause": "webb.test/pause:3.4", "busybox": "webb.test/busybox:1"}


def log(msg: str) -> None:
    print(f"build_images: {msg}", file=sys.stderr, flush=True)


def sha(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def run(args: list[str], **kw) -> None:
    res = subprocess.run(args, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:6])}...: exit {res.returncode}\n"
                           f"{(res.stdout + res.stderr)[-3000:]}")


def chart_version() -> str:
    for line in (ROOT / "charts/webb/Chart.yaml").read_text().splitlines():
        if line.startswith("appVersion:"):
            return line.split(":", 1)[1].strip().strip('"')
    raise RuntimeError("charts/webb/Chart.yaml has no appVersion")


# ---------------------------------------------------------------- small images
def build_pause() -> Path:
    binary = KUBE_BIN / "pause"
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing: run scripts/build_kube.sh (make setup)")
    data = binary.read_bytes()
    out = CACHE / f"pause-{sha(RECIPE, data)}.tar"
    if out.exists():
        return out
    tree = CACHE / "work-pause"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    (tree / "pause").write_bytes(data)
    (tree / "pause").chmod(0o755)
    layer = CACHE / "work-pause.layer.tar"
    layer_from_tree(tree, layer)
    write_archive(out, SMALL["pause"], [layer], {"Entrypoint": ["/pause"], "User": "65535:65535"})
    layer.unlink()
    shutil.rmtree(tree)
    return out


def build_busybox() -> Path:
    bb = Path("/bin/busybox")
    data = bb.read_bytes()
    out = CACHE / f"busybox-{sha(RECIPE, data)}.tar"
    if out.exists():
        return out
    tree = CACHE / "work-busybox"
    shutil.rmtree(tree, ignore_errors=True)
    for d in ("bin", "tmp", "etc"):
        (tree / d).mkdir(parents=True)
    (tree / "bin/busybox").write_bytes(data)
    (tree / "bin/busybox").chmod(0o755)
    applets = subprocess.run([str(bb), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for a in applets:
        if a != "busybox":
            (tree / "bin" / a).symlink_to("busybox")
    layer = CACHE / "work-busybox.layer.tar"
    layer_from_tree(tree, layer)
    write_archive(out, SMALL["busybox"], [layer],
                  {"Env": [f"PATH={DEFAULT_PATH}"], "Cmd": ["/bin/sh"]})
    layer.unlink()
    shutil.rmtree(tree)
    return out


# ---------------------------------------------------------------- base trees
def base_tree(image: str) -> tuple[Path, Path, str]:
    """(root filesystem, its layer tar, key) of a FROM image, made once."""
    if image not in BASES:
        raise RuntimeError(f"FROM {image}: no offline base for it (known: {', '.join(BASES)})")
    extra = BASES[image]
    key = sha(RECIPE, "debootstrap", SUITE, "minbase", *extra)
    d = CACHE / f"base-{key}"
    rootfs, layer = d / "rootfs", d / "layer.tar"
    if layer.exists():
        return rootfs, layer, key
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    log(f"debootstrap {SUITE} for {image} (about a minute or two)")
    args = ["debootstrap", "--variant=minbase"]
    if extra:
        args.append("--include=" + ",".join(extra))
    run(args + [SUITE, str(rootfs), MIRROR])
    # Like the official -slim images (docker-debian-artifacts): dpkg leaves out
    # documentation, manuals and translations, apt keeps no .debs or caches; what
    # debootstrap already put there goes the same way.
    (rootfs / "etc/dpkg/dpkg.cfg.d/docker").write_text(SLIM_DPKG)
    for name, text in SLIM_APT.items():
        (rootfs / "etc/apt/apt.conf.d" / name).write_text(text)
    for sub in ("usr/share/man", "usr/share/info", "usr/share/groff", "usr/share/lintian",
                "usr/share/linda"):
        for p in (rootfs / sub).glob("*"):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    for p in (rootfs / "usr/share/locale").glob("*"):
        if p.name != "locale.alias":
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    for p in (rootfs / "usr/share/doc").glob("*/*"):
        if p.name != "copyright":
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
    (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
    for p in (rootfs / "var/cache/apt").glob("*.bin"):
        p.unlink()
    shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
    (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True)
    layer_from_tree(rootfs, layer)
    return rootfs, layer, key


# ---------------------------------------------------------------- Dockerfiles
def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        s = line.strip()
        if s.startswith("#") or (not s and not pending):
            continue
        if s.endswith("\\"):
            pending += s[:-1] + " "
            continue
        full, pending = pending + s, ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def ignore_patterns(dockerfile: Path) -> list[str]:
    f = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if not f.exists():
        return []
    return [l.strip() for l in f.read_text().splitlines() if l.strip() and not l.startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: patterns are cleaned paths (a trailing / is dropped), `**/` matches
    any depth, `!` lets back in, and the last pattern that matches decides."""
    result = False
    for p in patterns:
        negate = p.startswith("!")
        p = os.path.normpath(p.lstrip("!"))
        if fnmatch.fnmatch(rel, p) or (p.startswith("**/") and (
                fnmatch.fnmatch(os.path.basename(rel), p[3:]) or fnmatch.fnmatch(rel, p[3:]))):
            result = not negate
    return result


def context_files(src: str, patterns: list[str]) -> list[str]:
    """Files (relative to the repository) that `COPY src` reads."""
    base = ROOT / src
    if base.is_file():
        return [src]
    files = []
    for dirpath, dirnames, filenames in os.walk(base):
        rel_dir = os.path.relpath(dirpath, ROOT)
        dirnames[:] = sorted(d for d in dirnames if not ignored(os.path.join(rel_dir, d), patterns))
        for n in sorted(filenames):
            rel = os.path.join(rel_dir, n)
            if not ignored(rel, patterns):
                files.append(rel)
    return files


@dataclass
class Stage:
    name: str
    base: str
    rootfs: Path | None = None
    key: str = ""
    fs_key: str = ""
    config: dict = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def parse_env(args: str) -> list[tuple[str, str]]:
    parts = shlex.split(args)
    if len(parts) >= 2 and "=" not in parts[0]:  # ENV key value
        return [(parts[0], " ".join(parts[1:]))]
    return [tuple(p.split("=", 1)) for p in parts]  # type: ignore[misc]


def host_build_inputs() -> tuple[dict[str, str], list[tuple[str, str]], str]:
    """What a RUN borrows from the host so that it reaches what the host reaches, as
    build args and secrets do for Docker: the CA bundle (networks that inspect TLS add
    their own CA), pip's configuration merged into one file, the local wheel
    directories, file:// indexes and constraint files it names, and proxy settings. Returns (env,
    [(host path, path in the chroot)], pip.conf text)."""
    env: dict[str, str] = {}
    binds: list[tuple[str, str]] = []
    for k, v in os.environ.items():
        if k.lower() in ("http_proxy", "https_proxy", "no_proxy") or (
                k.startswith("PIP_") and k not in ("PIP_CERT", "PIP_CONFIG_FILE")):
            env[k] = v
    ca = os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
    if os.path.isfile(ca):
        binds.append((ca, "/tmp/.webb-host/ca.crt"))
        for k in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE"):
            env[k] = "/tmp/.webb-host/ca.crt"
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read([p for p in ("/etc/pip.conf", "/etc/xdg/pip/pip.conf",
                          os.path.expanduser("~/.pip/pip.conf"),
                          os.path.expanduser("~/.config/pip/pip.conf"),
                          os.environ.get("PIP_CONFIG_FILE", "")) if p and os.path.isfile(p)])
    for section in cfg.sections():
        cfg.remove_option(section, "cert")  # the bundle above replaces it
    local = set()
    values = [v for sec in cfg.sections() for _, v in cfg.items(sec)]
    values += [os.environ.get("PIP_FIND_LINKS", ""), os.environ.get("PIP_EXTRA_INDEX_URL", "")]
    for v in values:
        for word in v.split():
            path = word[len("file://"):] if word.startswith("file://") else word
            if path.startswith("/") and os.path.exists(path):  # wheels, indexes, constraints
                # a PEP 503 index's files usually sit beside its simple/ directory
                local.add(os.path.dirname(path.rstrip("/"))
                          if os.path.basename(path.rstrip("/")) == "simple" else path)
    binds += [(p, p) for p in sorted(local)]
    text = ""
    if cfg.sections():
        env["PIP_CONFIG_FILE"] = "/tmp/.webb-host/pip.conf"
        import io
        buf = io.StringIO()
        cfg.write(buf)
        text = buf.getvalue()
    return env, binds, text


def chroot_run(rootfs: Path, command: str, env: dict[str, str]) -> None:
    """RUN: /bin/sh -c in a chroot of the tree, in a private mount namespace (proc, dev
    and the host's inputs mounted there vanish with it), with the host's resolv.conf.
    Directories made only to mount on are removed again, so the image gets none of it."""
    pip_cache = CACHE / "pip-cache"
    pip_cache.mkdir(parents=True, exist_ok=True)
    host_env, binds, pip_conf = host_build_inputs()
    binds.append((str(pip_cache), "/tmp/.webb-pip-cache"))
    resolv = rootfs / "etc/resolv.conf"
    saved = resolv.read_bytes() if resolv.is_file() and not resolv.is_symlink() else None
    if resolv.is_symlink():
        resolv.unlink()
    shutil.copyfile("/etc/resolv.conf", resolv)
    made: list[Path] = []

    def mountpoint(rel: str, is_dir: bool) -> None:
        p = rootfs / rel.lstrip("/")
        missing = []
        q = p if is_dir else p.parent
        while not q.exists():
            missing.append(q)
            q = q.parent
        for m in reversed(missing):
            m.mkdir()
            made.append(m)
        if not is_dir and not p.exists():
            p.touch()
            made.append(p)

    mountpoint("/tmp/.webb-host", True)
    if pip_conf:
        (rootfs / "tmp/.webb-host/pip.conf").write_text(pip_conf)
    r = shlex.quote(str(rootfs))
    # First drop the copies of network namespace mounts this namespace got: held for
    # the minutes a RUN takes, they would keep other programs' namespaces alive after
    # those delete them. One that vanished meanwhile (its namespace was deleted while this
    # list was read) needs no unmounting: a failed umount is not a failed build.
    mounts = ["{ awk '$3 == \"nsfs\" {print $2}' /proc/self/mounts | sort -r"
              " | xargs -r -n1 umount -l 2>/dev/null || true; }",
              f"mount -t proc proc {r}/proc", f"mount --rbind /dev {r}/dev"]
    for src, dst in binds:
        mountpoint(dst, os.path.isdir(src))
        mounts.append(f"mount --bind {shlex.quote(src)} {r}{shlex.quote(dst)}")
        if dst != "/tmp/.webb-pip-cache":
            mounts.append(f"mount -o remount,bind,ro {r}{shlex.quote(dst)}")
    inner = " && ".join(mounts + [f"exec chroot {r} /bin/sh -c {shlex.quote(command)}"])
    full_env = {"PATH": DEFAULT_PATH, "HOME": "/root", "PIP_CACHE_DIR": "/tmp/.webb-pip-cache",
                **host_env, **env}
    try:
        res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", inner],
                             env=full_env, capture_output=True, text=True)
    finally:
        (rootfs / "tmp/.webb-host/pip.conf").unlink(missing_ok=True)
        for m in reversed(made):
            try:
                m.rmdir() if m.is_dir() else m.unlink()
            except OSError:
                pass
        if saved is not None:
            resolv.write_bytes(saved)
        else:
            resolv.unlink(missing_ok=True)
    if res.returncode != 0:
        raise RuntimeError(f"RUN {command[:200]}: exit {res.returncode}\n"
                           f"{(res.stdout + res.stderr)[-4000:]}")


def copy_into(rootfs: Path, src: Path, dest: str, files: list[str] | None) -> None:
    target = rootfs / dest.lstrip("/")
    if src.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        if files is None:  # from another stage: all of it
            run(["cp", "-a", f"{src}/.", str(target)])
            return
        for rel in files:
            s = ROOT / rel
            t = target / os.path.relpath(s, src)
            t.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, t)
    else:
        if dest.endswith("/"):
            target = target / src.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def snapshot_dir(key: str) -> Path:
    return CACHE / f"snap-{key}"


def restore(key: str, into: Path) -> bool:
    snap = snapshot_dir(key) / "rootfs"
    if not (snapshot_dir(key) / "done").exists():
        return False
    shutil.rmtree(into, ignore_errors=True)
    run(["cp", "-a", str(snap), str(into)])
    return True


def save_snapshot(key: str, rootfs: Path) -> None:
    d = snapshot_dir(key)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    run(["cp", "-a", str(rootfs), str(d / "rootfs")])
    (d / "done").write_text(time.strftime("%F %T"))


def apply_config(stage: Stage, ins: str, args: str) -> None:
    """What an instruction does to the image config and to the build's environment."""
    if ins in ("ENV", "ARG"):
        pairs = parse_env(args) if ins == "ENV" else (
            [tuple(args.split("=", 1))] if "=" in args else [])
        for k, v in pairs:
            stage.env[k] = v
            if ins == "ENV":
                env = [e for e in stage.config.get("Env", []) if not e.startswith(k + "=")]
                stage.config["Env"] = env + [f"{k}={v}"]
    elif ins in ("ENTRYPOINT", "CMD"):
        stage.config["Entrypoint" if ins == "ENTRYPOINT" else "Cmd"] = json.loads(args)
    elif ins == "USER":
        stage.config["User"] = args
    elif ins == "WORKDIR":
        stage.config["WorkingDir"] = args
    elif ins == "EXPOSE":
        stage.config.setdefault("ExposedPorts", {})[args if "/" in args else f"{args}/tcp"] = {}


def build_dockerfile(component: str, used: set[str]) -> Path:
    dockerfile = ROOT / "images" / component / "Dockerfile"
    patterns = ignore_patterns(dockerfile)
    stages: dict[str, Stage] = {}
    # One pass to compute the stages' keys without building anything.
    plan: list[tuple[Stage, list[tuple[str, str, str]]]] = []
    current: Stage | None = None
    for ins, args in instructions(dockerfile):
        if ins == "FROM":
            words = args.split()
            image = words[0]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"stage{len(plan)}"
            if image in stages:
                raise RuntimeError(f"{dockerfile}: FROM another stage is not supported")
            _, _, base_key = base_tree(image)
            current = Stage(name, image, key=sha("base", base_key))
            stages[name] = current
            plan.append((current, []))
            continue
        assert current is not None, f"{dockerfile}: instruction before FROM"
        content = ""
        if ins == "COPY":
            parts = args.split()
            flags = [p for p in parts if p.startswith("--")]
            srcs = [p for p in parts if not p.startswith("--")][:-1]
            src_from = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            if src_from:
                content = stages[src_from].key
            else:
                h = hashlib.sha256()
                for s in srcs:
                    for rel in context_files(s, patterns):
                        h.update(rel.encode() + b"\0" + (ROOT / rel).read_bytes() + b"\0")
                        h.update(oct((ROOT / rel).stat().st_mode & 0o777).encode())
                content = h.hexdigest()
        current.key = sha(current.key, ins, args, content)
        plan[-1][1].append((ins, args, current.key))
        if ins in ("RUN", "COPY"):
            current.fs_key = current.key

    final = plan[-1][0]
    ref = f"webb-{component}:{chart_version()}"
    # The final stage's filesystem layer depends only on the instructions that change
    # files: images differing in ENTRYPOINT/CMD/EXPOSE alone (relay, ui, metrics) share it.
    layer_cache = CACHE / f"layer-{sha(RECIPE, final.fs_key or final.key)}.tar"
    out = CACHE / f"{component}-{sha(RECIPE, final.key, ref)}.tar"
    if out.exists():
        used.update(key for _, steps in plan for ins, _, key in steps if ins == "RUN")
        return out
    log(f"building {ref} from {dockerfile.relative_to(ROOT)}")
    execute = not layer_cache.exists()
    for stage, steps in plan:
        if not execute:  # only the config is needed
            for ins, args, _ in steps:
                apply_config(stage, ins, args)
            continue
        base_root, base_layer, base_key = base_tree(stage.base)
        work = CACHE / f"work-{component}-{stage.name}"
        # Resume from the last RUN whose snapshot exists (Docker's build cache).
        start = 0
        for i in range(len(steps) - 1, -1, -1):
            if steps[i][0] == "RUN" and restore(steps[i][2], work):
                used.add(steps[i][2])
                start = i + 1
                break
        else:
            shutil.rmtree(work, ignore_errors=True)
            run(["cp", "-a", str(base_root), str(work)])
        stage.rootfs = work
        for i, (ins, args, key) in enumerate(steps):
            # ENV/ARG/USER/... before the resume point still shape the config and env.
            apply_config(stage, ins, args)
            if i < start:
                continue
            if ins == "RUN":
                log(f"{component}/{stage.name}: RUN {args[:70]}")
                env = dict(stage.env)
                if "PATH" in env:
                    env["PATH"] = env["PATH"].replace("$PATH", DEFAULT_PATH)
                chroot_run(work, args, env)
                save_snapshot(key, work)
                used.add(key)
            elif ins == "COPY":
                parts = args.split()
                flags = [p for p in parts if p.startswith("--")]
                words = [p for p in parts if not p.startswith("--")]
                srcs, dest = words[:-1], words[-1]
                src_from = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
                for s in srcs:
                    if src_from:
                        copy_into(work, stages[src_from].rootfs / s.lstrip("/"), dest, None)  # type: ignore[operator]
                    else:
                        copy_into(work, ROOT / s, dest, context_files(s, patterns))
            elif ins not in ("ENV", "ARG", "ENTRYPOINT", "CMD", "USER", "WORKDIR", "EXPOSE", "LABEL"):
                raise RuntimeError(f"{dockerfile}: {ins} is not supported offline")
    # The final stage: its base tree and what the instructions changed on top of it.
    base_root, base_layer, _ = base_tree(final.base)
    env = final.config.get("Env", [])
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, f"PATH={DEFAULT_PATH}")
    final.config["Env"] = [e.replace("$PATH", DEFAULT_PATH) for e in env]
    if execute:
        tmp = CACHE / f"work-{component}.layer.tar"
        layer_from_tree(final.rootfs, tmp, below=base_root)  # type: ignore[arg-type]
        tmp.replace(layer_cache)
    os.utime(layer_cache)
    write_archive(out, ref, [base_layer, layer_cache], final.config)
    # Keep every RUN snapshot of this plan: a later change resumes from the nearest one.
    used.update(key for _, steps in plan for ins, _, key in steps
                if ins == "RUN" and (snapshot_dir(key) / "done").exists())
    for stage, _ in plan:
        shutil.rmtree(CACHE / f"work-{component}-{stage.name}", ignore_errors=True)
    return out


# Several checkouts (worktrees) of different code share the cache: each keeps what it
# uses recently; older archives and snapshots go.
ARCHIVES_KEPT = 2   # per image name
SNAPSHOTS_KEPT = 8
# An archive used this recently stays even beyond ARCHIVES_KEPT: with more checkouts
# building at once than that, each one's gc deleted the archives another had just
# built, before that one's tests imported them (or before its own main() touched them:
# FileNotFoundError), and every run rebuilt.
ARCHIVES_RECENT_S = 3600


def gc(names: list[str], used: set[str], now: float | None = None) -> None:
    """Keep the most recently used archives of each image (and any used within the
    hour) and the most recently used snapshots (those this run used count as just
    used); drop the rest."""
    now = time.time() if now is None else now
    for n in names:
        old = sorted(CACHE.glob(f"{n}-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
        for p in old[ARCHIVES_KEPT:]:
            try:
                if now - p.stat().st_mtime < ARCHIVES_RECENT_S:
                    continue
            except FileNotFoundError:
                continue
            p.unlink(missing_ok=True)
    layers = sorted(CACHE.glob("layer-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for p in layers[ARCHIVES_KEPT * 2:]:
        p.unlink(missing_ok=True)
    for key in used:
        if (snapshot_dir(key) / "done").exists():
            os.utime(snapshot_dir(key) / "done")
    snaps = sorted((d for d in CACHE.glob("snap-*") if (d / "done").exists()),
                   key=lambda d: (d / "done").stat().st_mtime, reverse=True)
    for d in snaps[SNAPSHOTS_KEPT:]:
        shutil.rmtree(d, ignore_errors=True)
    bases = {f"base-{base_key}" for image in BASES for base_key in [
        sha(RECIPE, "debootstrap", SUITE, "minbase", *BASES[image])]}
    for d in CACHE.glob("base-*"):  # trees of an older recipe
        if d.name not in bases:
            shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", help="names to build (default: all)")
    p.add_argument("--no-gc", action="store_true", help="keep older archives and snapshots")
    a = p.parse_args()
    names = a.only or [*SMALL, *COMPONENTS]
    CACHE.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    used: set[str] = set()
    t0 = time.monotonic()
    for n in names:
        if n not in SMALL and n not in COMPONENTS:
            raise SystemExit(f"build_images: unknown image {n!r}")
        # One build at a time per machine and kind: the Dockerfile images share base
        # trees and snapshots; the small ones need not wait for them.
        with open(CACHE / f".lock-{n if n in SMALL else 'dockerfiles'}", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if n == "pause":
                out[n] = str(build_pause())
            elif n == "busybox":
                out[n] = str(build_busybox())
            else:
                out[n] = str(build_dockerfile(n, used))
            os.utime(out[n])  # most recently used, before another checkout's gc runs
    if not a.no_gc:
        with open(CACHE / ".lock-dockerfiles", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            gc(names, used)
    if time.monotonic() - t0 > 1:
        log(f"done in {time.monotonic() - t0:.0f}s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
