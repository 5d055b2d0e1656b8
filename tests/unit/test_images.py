"""The container images (images/*/Dockerfile), checked without Docker (no engine runs here):
the Dockerfiles are parsed; every COPY source must exist in the repository (the build
context); bases, users and entrypoints are what docs/helm.md promises; the CMD
arguments must be accepted by each service's own argument parser; and the install
recipe every image runs (images/install.sh) is run for real outside Docker, on a build
context made of exactly the COPY sources, into a fresh venv whose console scripts must
then start (--help) and import the generated stubs. The agent image's entrypoint is run
too, to check how it picks kernel headers for bcc.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
COMPONENTS = ["agent", "relay", "ui", "metrics"]


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{dockerfile}: dangling continuation"
    return out


def stages(component: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile's build stages, each a list of instructions starting with FROM."""
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(IMAGES / component / "Dockerfile"):
        if ins[0] == "FROM":
            result.append([])
        assert result, "the Dockerfile must start with FROM"
        result[-1].append(ins)
    return result


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(a, str) for a in value), args
    return value


def final(component: str, name: str) -> list[str] | None:
    found = [a for ins, a in stages(component)[-1] if ins == name]
    return exec_form(found[-1]) if found else None


def copy_sources(component: str) -> list[str]:
    """Sources of the COPY lines that read the build context (not --from=stage)."""
    out = []
    for stage in stages(component):
        for ins, args in stage:
            if ins == "COPY" and "--from=" not in args:
                parts = [p for p in args.split() if not p.startswith("--")]
                out += parts[:-1]
    return out


@pytest.mark.parametrize("component", COMPONENTS)
def test_copy_sources_exist(component):
    sources = copy_sources(component)
    assert "images/install.sh" in sources and "pyproject.toml" in sources
    for src in sources:
        assert (ROOT / src).exists(), f"images/{component}/Dockerfile copies missing {src}"


@pytest.mark.parametrize("component", COMPONENTS)
def test_bases_users_and_entrypoints(component):
    froms = [s[0][1].split()[0] for s in stages(component)]
    if component == "agent":
        # a stage that compiles the C accelerators, then the image with the module only
        assert froms == ["debian:bookworm-slim", "debian:bookworm-slim"]
        from_ext = [a for ins, a in stages(component)[-1] if ins == "COPY" and "--from=" in a]
        for module in ("pipeline/l7/_httpscan.so", "datapath/_ringbuf.so"):
            assert any(a.startswith("--from=ext ") and a.endswith(
                f"/site-packages/webb_agent/{module}") for a in from_ext), (module, from_ext)
        text = (IMAGES / "agent" / "Dockerfile").read_text()
        for pkg in ("python3-bpfcc", "bpfcc-tools", "kmod", "iproute2", "linux-headers-"):
            assert pkg in text, pkg
        entry = final(component, "ENTRYPOINT")
        assert entry[0] == "/usr/local/bin/webb-agent-entrypoint" and entry[1] == "webb-agent"
        script = entry[1]
    else:
        assert set(froms) == {"python:3.11-slim"}
        users = [a for ins, a in stages(component)[-1] if ins == "USER"]
        assert users and users[-1].split(":")[0] not in ("0", "root"), "must run as non-root"
        assert users[-1].split(":")[0].isdigit(), "numeric, so runAsNonRoot can verify it"
        (script,) = final(component, "ENTRYPOINT")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert script == f"webb-{component}" and script in scripts


@pytest.mark.parametrize("component", COMPONENTS)
def test_cmd_arguments_are_accepted(component):
    args = final(component, "CMD")
    assert args, "a default CMD"
    try:
        if component == "agent":
            from webb_agent.main import parse_args
            parse_args(args)
        elif component == "relay":
            from webb_relay.main import parse_args
            parse_args(args)
        elif component == "ui":
            from webb_ui.main import build_parser
            build_parser().parse_args(args)
        else:
            from webb_metrics.main import parse_args
            from webb_metrics.pipeline import Pipeline
            Pipeline(parse_args(args).specs)
    except SystemExit as e:
        pytest.fail(f"webb-{component} rejects the image's CMD {args} (exit {e.code})")


def test_install_recipe_builds_working_commands(tmp_path):
    """images/install.sh, as the Dockerfiles run it, on a context of just the COPY sources."""
    context = tmp_path / "src"
    for src in sorted(set(copy_sources("relay")) | set(copy_sources("agent"))):
        if src.startswith("images/"):
            continue
        dst = context / src
        dst.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / src).is_dir():
            shutil.copytree(ROOT / src, dst, ignore=shutil.ignore_patterns(
                "__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(ROOT / src, dst)
    # what Dockerfile.dockerignore leaves out: stubs must come from the recipe itself
    for stub in (context / "webb" / "api").iterdir():
        if stub.is_dir():
            shutil.rmtree(stub)
    venv = tmp_path / "venv"
    python = os.path.realpath(sys.executable)  # the interpreter behind this venv
    res = subprocess.run(["sh", str(IMAGES / "install.sh"), str(context), str(venv)],
                         cwd=tmp_path, env={**os.environ, "PYTHON": python},
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for component in ("relay", "ui", "metrics"):
        out = subprocess.run([str(venv / "bin" / f"webb-{component}"), "--help"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "--listen-address" in out.stdout, out.stderr[-2000:]
    # The agent imports bcc, which the agent image has from Debian's python3-bpfcc through
    # --system-site-packages; this machine's interpreter is no Debian one, so bcc is
    # linked in as scripts/setup.sh does for the project's venv.
    bcc = Path("/usr/lib/python3/dist-packages/bcc")
    if bcc.is_dir():
        site = subprocess.run([str(venv / "bin" / "python"), "-I", "-c",
                               "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, timeout=60).stdout.strip()
        (Path(site) / "bcc").symlink_to(bcc)
        out = subprocess.run([str(venv / "bin" / "webb-agent"), "--help"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "--k8s" in out.stdout, out.stderr[-2000:]
    out = subprocess.run([str(venv / "bin" / "webb"), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    out = subprocess.run([str(venv / "bin" / "python"), "-I", "-c",
                          "import webb.api.flow.flow_pb2, webb_ui.app; "
                          "from importlib.resources import files; "
                          "print(sorted(p.name for p in files('webb_ui').joinpath('static').iterdir()))"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "index.html" in out.stdout
    assert not (venv / "bin" / "python_grpc_tools").exists()
    freeze = subprocess.run([str(venv / "bin" / "pip"), "freeze"], capture_output=True,
                            text=True, timeout=120).stdout.lower()
    assert "grpcio-tools" not in freeze  # only needed to generate the stubs
    assert "webb @ file://" in freeze and "-py3-none-any.whl" in freeze  # one wheel, not editable


def _entrypoint(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(IMAGES / "agent" / "entrypoint.sh"), "sh", "-c",
                           'echo "BCC_KERNEL_SOURCE=${BCC_KERNEL_SOURCE:-}"'],
                          env={"PATH": os.environ["PATH"], **env}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)


def test_agent_entrypoint_picks_kernel_headers(tmp_path):
    release = os.uname().release
    modules, generic = tmp_path / "modules", tmp_path / "generic"
    (generic / "include").mkdir(parents=True)
    env = {"WEBB_MODULES_DIR": str(modules), "WEBB_GENERIC_HEADERS": str(generic)}
    # no node headers: the image's generic ones
    r = _entrypoint(tmp_path, env)
    assert r.returncode == 0 and r.stdout.strip() == f"BCC_KERNEL_SOURCE={generic}", r
    # the node's headers for its kernel win
    (modules / release / "build" / "include").mkdir(parents=True)
    r = _entrypoint(tmp_path, env)
    assert r.stdout.strip() == "BCC_KERNEL_SOURCE=" and "kernel headers of the node" in r.stderr
    # an explicit BCC_KERNEL_SOURCE is left alone
    r = _entrypoint(tmp_path, {**env, "BCC_KERNEL_SOURCE": "/somewhere"})
    assert r.stdout.strip() == "BCC_KERNEL_SOURCE=/somewhere"
    # nothing at all: said clearly, and the command still runs (bcc may use kheaders)
    shutil.rmtree(modules)
    shutil.rmtree(generic)
    r = _entrypoint(tmp_path, env)
    assert r.returncode == 0 and "no kernel headers found" in r.stderr
