"""Lint and render the chart offline with helm-python-sdk (Helm's Go library, no helm binary).

    python helm/render.py OUTDIR [VALUES.yaml ...]

writes OUTDIR/rendered.yaml (the templates' text, as `helm template` prints it),
OUTDIR/manifests.yaml (every rendered object), OUTDIR/NOTES.txt and OUTDIR/gateway.toml (the
ConfigMap's configuration) and prints one line per step. Values files merge in order, as
`helm -f a.yaml -f b.yaml` does. Exits 1 on a lint finding of warning or worse or a render error.
helm/tests imports the functions.
"""

from __future__ import annotations

import pathlib
import sys

import helm_python as helm
import yaml

CHART = pathlib.Path(__file__).resolve().parent / "sync-gateway"
RELEASE = "sg"
NAMESPACE = "gateways"
SEVERITY = {0: "unknown", 1: "info", 2: "warning", 3: "error"}


def load_values(files: list[str]) -> dict:
    """The values of `helm -f FILE...`: later files override earlier ones, maps merge deeply."""
    merged: dict = {}
    for f in files:
        merge(merged, helm.values_from_yaml(pathlib.Path(f).read_text()))
    return merged


def merge(into: dict, over: dict) -> None:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v


def lint(values: dict) -> list[str]:
    """Findings of `helm lint --strict` at warning or worse."""
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
    return [
        f"{SEVERITY.get(m['severity'], m['severity'])}: {m['path']}: {m['error'].strip()}"
        for m in report["messages"]
        if m["severity"] >= 2
    ] + [e.strip() for e in report.get("errors", []) if e.strip()]


def render(values: dict) -> dict[str, str]:
    """`helm template`: template path -> rendered text (schema-validated; raises on failure)."""
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(rendered: dict[str, str]) -> list[dict]:
    """Every Kubernetes object in the rendered templates (NOTES.txt is not one)."""
    out = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        out.extend(d for d in yaml.safe_load_all(text) if d)
    return out


def find(objs: list[dict], kind: str) -> dict:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def gateway_toml(objs: list[dict]) -> str:
    return find(objs, "ConfigMap")["data"]["gateway.toml"]


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = pathlib.Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    files = argv[2:]
    label = ", ".join(files) if files else "the default values"
    values = load_values(files)
    findings = lint(values)
    if findings:
        print(f"FAIL helm lint --strict with {label}:")
        for f in findings:
            print(f"  {f}")
        return 1
    print(f"ok   helm lint --strict with {label}")
    rendered = render(values)
    objs = objects(rendered)
    (out / "rendered.yaml").write_text(
        "".join(
            f"---\n# Source: {p}\n{t.strip()}\n"
            for p, t in sorted(rendered.items())
            if t.strip() and not p.endswith("NOTES.txt")
        )
    )
    (out / "manifests.yaml").write_text(yaml.safe_dump_all(objs, sort_keys=False))
    (out / "NOTES.txt").write_text(next(t for p, t in rendered.items() if p.endswith("NOTES.txt")))
    (out / "gateway.toml").write_text(gateway_toml(objs))
    kinds = ", ".join(sorted(o["kind"] for o in objs))
    print(f"ok   helm template with {label}: {len(objs)} objects ({kinds})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
