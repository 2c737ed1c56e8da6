#!/usr/bin/env bash
# Checks openapi/openapi.yaml: validates it (openapi-spec-validator), then runs schemathesis
# against a running `sync-gateway dev` (simulated Entra ID and Graph, on loopback): a bounded
# number of examples per operation, all checks (no 5xx, every status, header, content type and
# body as documented, 405/Allow, auth), and stateful sequences that follow the document's links
# (POST /sync -> GET /sync/runs/{id}, the id its Location names).
#
# Needs python3 (with venv) and the debug binary (built here if missing). Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: schemathesis 4 changed the command line; these versions are the ones this script was
# written against.
SCHEMATHESIS_VERSION=4.32.5
VALIDATOR_VERSION=0.9.0
# Per operation and phase; with the seed, the run is repeatable.
MAX_EXAMPLES="${OPENAPI_MAX_EXAMPLES:-25}"
SEED="${OPENAPI_SEED:-1}"

venv="$PWD/target/openapi-venv"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  "openapi-spec-validator==$VALIDATOR_VERSION" "schemathesis==$SCHEMATHESIS_VERSION"

echo "== openapi-spec-validator openapi/openapi.yaml"
"$venv/bin/openapi-spec-validator" openapi/openapi.yaml

cargo build --quiet --bin sync-gateway
work=$(mktemp -d)
# Cooldown 5 s: repeated syncs are `scheduled` and some run while schemathesis is at work.
target/debug/sync-gateway dev --listen 127.0.0.1:0 --audit-path "$work/dev-audit.jsonl" \
  --cooldown-seconds 5 >"$work/dev.out" 2>"$work/dev.err" &
dev_pid=$!
stop_dev() {
  kill "$dev_pid" 2>/dev/null || true
  wait "$dev_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap stop_dev EXIT

for _ in $(seq 1 300); do
  grep -q "Ctrl-C stops everything" "$work/dev.out" && break
  if ! kill -0 "$dev_pid" 2>/dev/null; then
    echo "sync-gateway dev exited:" >&2
    cat "$work/dev.err" >&2
    exit 1
  fi
  sleep 0.1
done
gateway=$(sed -n 's/^  gateway *\(http[^ ]*\).*/\1/p' "$work/dev.out")
entra=$(sed -n 's/^  simulated Entra ID *\(http[^ ]*\).*/\1/p' "$work/dev.out")
tenant=$(sed -n 's/.*(tenant \([0-9a-f-]*\)).*/\1/p' "$work/dev.out")
if [[ -z "$gateway" || -z "$entra" || -z "$tenant" ]]; then
  echo "could not read the gateway, Entra and tenant from what dev printed:" >&2
  cat "$work/dev.out" >&2
  exit 1
fi
echo "dev gateway at $gateway"

echo "== GET /openapi.yaml serves this document (server.expose_openapi is on in dev)"
"$venv/bin/python" - "$gateway/openapi.yaml" openapi/openapi.yaml <<'PY'
import sys, urllib.request
served = urllib.request.urlopen(sys.argv[1], timeout=10).read()
if served != open(sys.argv[2], "rb").read():
    sys.exit("the served document differs from openapi/openapi.yaml")
PY

# Each request gets a fresh valid token (see schemathesis_hooks.py), so only the tenant's
# limit (burst 30, then 2 a second) applies. The stateful phase runs first, on a whole bucket,
# so POST /sync answers 202 and its link is followed; it spends the bucket, which refills
# before the other phases. A 429 is a documented answer either way.
export SYNC_GATEWAY_DEV_ENTRA="$entra" SYNC_GATEWAY_DEV_TENANT="$tenant"
export SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH="$PWD/openapi" PYTHONDONTWRITEBYTECODE=1
st=("$venv/bin/schemathesis" --config-file "$PWD/openapi/schemathesis.toml"
  run "$PWD/openapi/openapi.yaml" --url "$gateway" --checks all
  --max-examples "$MAX_EXAMPLES" --seed "$SEED" --no-color --report-dir "$work/report")
echo "== schemathesis: stateful (links)"
(cd "$work" && "${st[@]}" --phases stateful) | tee "$work/stateful.log"
if ! grep -Eq 'API Links: +[1-9][0-9]* covered' "$work/stateful.log"; then
  echo "the stateful phase followed no link (POST /sync -> GET /sync/runs/{id})" >&2
  exit 1
fi
echo "== schemathesis: examples, coverage, fuzzing"
sleep 15
(cd "$work" && "${st[@]}" --phases examples,coverage,fuzzing)
