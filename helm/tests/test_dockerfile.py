"""The Dockerfile and .dockerignore, read (the image cannot be built on these machines)."""

from __future__ import annotations

import fnmatch
import pathlib
import re
import subprocess
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# Instructions with their continuation lines joined.
INSTRUCTIONS = [
    line for line in re.sub(r"\\\n\s*", " ", DOCKERFILE).splitlines() if line and not line.startswith("#")
]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the build context (last matching pattern wins)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for p in patterns:
        negate = p.startswith("!")
        p = p.lstrip("!")
        alternatives = [p, p[3:]] if p.startswith("**/") else [p]
        if any(fnmatch.fnmatchcase(c, a) for c in candidates for a in alternatives):
            result = not negate
    return result


def test_every_file_the_build_copies_reaches_the_build_context():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        src
        for line in INSTRUCTIONS
        if line.startswith("COPY ") and "--from=" not in line
        for src in line.split()[1:-1]
    ]
    assert "src" in sources and "Cargo.lock" in sources
    tracked = subprocess.run(
        ["git", "ls-files", *sources], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked
    left_out = [f for f in tracked if ignored(f, patterns)]
    assert not left_out, f".dockerignore leaves out files the Dockerfile copies: {left_out}"
    # And what must never reach an image is left out.
    for local in ("target/release/sync-gateway", ".git/config", "audit.jsonl", "gateway.toml",
                  "dev-gateway.toml", "keys/audit-signing.pem", "webhook.session"):
        assert ignored(local, patterns), local


def test_the_release_build_is_locked_and_leaves_out_the_simulators():
    builds = [line for line in INSTRUCTIONS if "cargo build" in line]
    assert len(builds) == 2, builds
    for line in builds:
        assert "cargo build --release --locked --no-default-features" in line, line


def test_the_dependency_layer_has_a_placeholder_for_every_target_the_manifest_names():
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    paths = {manifest.get("lib", {}).get("path", "src/lib.rs")}
    for kind, folder in (("bin", None), ("bench", "benches"), ("example", "examples"), ("test", "tests")):
        for target in manifest.get(kind, []):
            paths.add(target.get("path") or f"{folder}/{target['name']}.rs")
    placeholder = next(line for line in INSTRUCTIONS if "cargo build" in line)
    for path in sorted(paths):
        assert path in placeholder, f"the placeholder build step does not create {path}"


def test_the_runtime_stage_is_non_root_with_the_documented_command():
    stages = [line for line in INSTRUCTIONS if line.startswith("FROM ")]
    assert stages[0].startswith("FROM rust:1.95-bookworm AS")
    assert stages[-1] in ("FROM debian:bookworm-slim", "FROM gcr.io/distroless/cc-debian12:nonroot")
    runtime = INSTRUCTIONS[INSTRUCTIONS.index(stages[-1]):]
    assert re.fullmatch(r"USER [1-9][0-9]*:[1-9][0-9]*", next(i for i in runtime if i.startswith("USER ")))
    assert 'ENTRYPOINT ["sync-gateway"]' in runtime
    assert 'CMD ["serve", "--config", "/etc/sync-gateway/gateway.toml"]' in runtime
    assert 'VOLUME ["/data"]' in runtime
    assert any("ca-certificates" in i for i in runtime)
    assert not any(re.search(r"\b(ENV|ARG)\b.*(SECRET|KEY|PASSWORD|TOKEN)", i, re.I) for i in INSTRUCTIONS)
