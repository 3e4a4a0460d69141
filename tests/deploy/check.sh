#!/usr/bin/env bash
# Checks the deployment side without a Docker engine or a cluster: the Dockerfile, the
# compose demos (one broker; three replicas sharing Redis), the Kubernetes manifests,
# and every example client against a live broker and dev IdP. From the repository root:
#
#   bash tests/deploy/check.sh          (TOKEN_BROKER_BIN=path to use a built binary)
#
# It installs what it needs: curl and python3-venv from Debian if missing, and the
# Python tools in tests/deploy/requirements.txt into target/deploy-tools/venv, reused
# while that file is unchanged. Ends with "N passed, N failed"; exits 1 on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
TOOLS="$ROOT/target/deploy-tools"
VENV="$TOOLS/venv"
started=$SECONDS
passed=0
failed=0
scratch="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup EXIT

section() { printf '\n=== %s ===\n' "$*"; }
# step NAME COMMAND...: runs it in this shell (so it may wait for this shell's
# children), shows its output indented, and counts the outcome.
step() {
  local name="$1" log rc=0
  shift
  log="$(mktemp)"
  "$@" >"$log" 2>&1 || rc=$?
  sed 's/^/    /' "$log"
  rm -f "$log"
  if ((rc == 0)); then
    passed=$((passed + 1))
    echo "  PASS $name"
  else
    failed=$((failed + 1))
    echo "  FAIL $name (exit $rc)"
  fi
}

section "tools"
apt_install() {
  if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "missing: $* (install it, or run as root on Debian so this script can)" >&2
    exit 1
  fi
  echo "apt-get install $*"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
for tool in python3 node java; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (expected on the machine)" >&2; exit 1; }
done
command -v curl >/dev/null || apt_install curl
# google-auth, for the example that uses the broker as the GCE metadata server: the
# emulation tests' virtualenv (target/sdk/venv), reused while its pins are unchanged.
bash tests/sdk/install.sh

stamp="$VENV/.requirements"
if ! cmp -s tests/deploy/requirements.txt "$stamp" 2>/dev/null; then
  echo "creating $VENV"
  rm -rf "$VENV"
  mkdir -p "$TOOLS"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    apt_install python3-venv
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/deploy/requirements.txt
  cp tests/deploy/requirements.txt "$stamp"
else
  echo "reusing $VENV"
fi
PY="$VENV/bin/python"
# promtool, for the alert rules: the binary from Debian's prometheus package, unpacked
# into target/deploy-tools (not installed: nothing is started), reused once there.
PROMTOOL="$TOOLS/promtool/usr/bin/promtool"
if [[ ! -x $PROMTOOL ]]; then
  command -v apt-get >/dev/null || { echo "missing: promtool (put it at $PROMTOOL)" >&2; exit 1; }
  echo "unpacking promtool from Debian's prometheus package into $TOOLS/promtool"
  rm -rf "$TOOLS/promtool"
  mkdir -p "$TOOLS/promtool"
  (
    cd "$TOOLS/promtool"
    apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get download prometheus >/dev/null 2>&1; }
    dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool && rm prometheus_*.deb
  )
fi
echo "promtool: $("$PROMTOOL" --version 2>&1 | head -1)"

if [[ -n ${TOKEN_BROKER_BIN:-} ]]; then
  BIN="$(realpath "$TOKEN_BROKER_BIN")"
else
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/token-broker"
  echo "cargo build (set TOKEN_BROKER_BIN to use a binary built elsewhere)"
  cargo build --locked --quiet
fi
[[ -x $BIN ]] || { echo "no binary at $BIN" >&2; exit 1; }
echo "binary: $BIN ($("$BIN" --version))"

section "a. linters"
hadolint_args=()
if [[ -f deploy/.hadolint.yaml ]]; then hadolint_args=(--config deploy/.hadolint.yaml); fi
step "hadolint Dockerfile" "$VENV/bin/hadolint" "${hadolint_args[@]}" Dockerfile
step "shellcheck on the shell scripts" "$VENV/bin/shellcheck" examples/shell/client.sh tests/deploy/check.sh tests/sdk/install.sh

section "b. Dockerfile against the repository and the binary"
step "dockerfile_check.py" "$PY" tests/deploy/dockerfile_check.py "$BIN"
# The image's first build step sees only Cargo.toml, Cargo.lock and stub sources, and
# runs with --locked: the lock file must resolve the manifest as it stands.
stub_resolves() {
  local context
  context="$(mktemp -d)"
  mkdir "$context/src"
  cp Cargo.toml Cargo.lock "$context/"
  echo 'fn main() {}' >"$context/src/main.rs"
  touch "$context/src/lib.rs"
  (cd "$context" && cargo metadata --locked --format-version 1 >/dev/null) && echo "Cargo.lock resolves Cargo.toml"
  local rc=$?
  rm -rf "$context"
  return "$rc"
}
step "the dependency layer resolves with --locked" stub_resolves

section "c. compose files and config files"
for compose in deploy/compose/docker-compose.yml deploy/compose/docker-compose.redis.yml; do
  step "$(basename "$compose") against the compose specification schema" \
    "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$compose"
done
step "compose_check.py (both compose files, the Redis ACL and secrets)" "$PY" tests/deploy/compose_check.py "$BIN"
while IFS= read -r config; do
  step "check-config $config" "$BIN" check-config --config "$config"
done < <(find deploy -name '*.toml' | sort)

section "d. Kubernetes manifests (kubernetes-validate --strict)"
rendered="$scratch/rendered"
step "kube_render.py" "$PY" tests/deploy/kube_render.py "$rendered"
validate() { "$VENV/bin/kubernetes-validate" --strict -k "$@"; }
# Native sidecars: 1.29 is the oldest release that runs them, 1.37 the newest schema here.
for version in 1.29.0 1.37.0; do
  step "base and add-to-existing, Kubernetes $version" \
    validate "$version" "$rendered/base.yaml" "$rendered/add-to-existing.yaml" deploy/kubernetes/base/persistentvolumeclaim.yaml
done
step "plain-sidecar, Kubernetes 1.27.0" validate 1.27.0 "$rendered/plain-sidecar.yaml"
# Shows that strict mode bites, and why plain-sidecar exists.
rejected_by_1_27() { ! validate 1.27.0 "$rendered/base.yaml"; }
step "base is rejected by Kubernetes 1.27.0 (no native sidecars)" rejected_by_1_27

section "e. examples against a live broker and dev IdP"
work="$scratch/live"
mkdir -m 700 "$work"

# wait_for SECONDS COMMAND...: polls until the command succeeds.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

bootstrap="check-bootstrap-$RANDOM$RANDOM"
"$BIN" dev-idp --listen 127.0.0.1:0 --initial-refresh-token "$bootstrap" --access-ttl 3s \
  --client-id dev-client --client-secret dev-secret >"$work/idp.out" 2>"$work/idp.err" &
pids+=($!)
wait_for 10 grep -q 'listening on http://' "$work/idp.out" || { cat "$work/idp.err"; exit 1; }
idp_url="$(grep -o 'http://[0-9.]*:[0-9]*' "$work/idp.out" | head -1)"
echo "dev IdP at $idp_url (access tokens live 3s)"

mkdir -p "$work/secrets"
printf '%s\n' "$bootstrap" >"$work/secrets/refresh_token"
printf 'dev-secret\n' >"$work/secrets/client_secret"
cat >"$work/broker.toml" <<TOML
[server]
listen = "127.0.0.1:0"
[state]
dir = "$work/state"
[credentials.demo]
grant = "refresh_token"
token_url = "$idp_url/token"
client_id = "dev-client"
client_secret = { file = "$work/secrets/client_secret" }
refresh_token = { file = "$work/secrets/refresh_token" }
[emulate.gce]
project_id = "check-project"
service_accounts = { default = "demo" }
TOML
step "check-config --check-secrets on the live config" "$BIN" check-config --config "$work/broker.toml" --check-secrets
"$BIN" run --config "$work/broker.toml" 2>"$work/broker.log" &
broker_pid=$!
pids+=("$broker_pid")
wait_for 10 grep -q '"message":"token-broker serving"' "$work/broker.log" || { cat "$work/broker.log"; exit 1; }
listen="$("$PY" -c 'import json,sys
for line in open(sys.argv[1]):
    event = json.loads(line)
    if event.get("message") == "token-broker serving":
        print(event["listen"]); break' "$work/broker.log")"
broker_url="http://$listen"
wait_for 15 "$BIN" probe --url "$broker_url" || { echo "broker never became ready"; cat "$work/broker.log"; exit 1; }
echo "broker at $broker_url, ready"

export TOKEN_BROKER_URL="$broker_url" CREDENTIAL=demo API_URL="$idp_url/api/whoami"
examples=(
  "shell:bash examples/shell/client.sh"
  "python:$PY examples/python/client.py"
  "node:node examples/node/client.mjs"
  "java:java examples/java/Client.java"
)
# example OUTPUT FORCE ROUNDS INTERVAL EXPECTED_LINES COMMAND...: runs one client and
# shows its output, which must be exactly the expected lines (one per argument line).
example() {
  local out="$1" force="$2" rounds="$3" interval="$4" expected="$5"
  shift 5
  FORCE_REJECT_FIRST="$force" ROUNDS="$rounds" INTERVAL="$interval" timeout 90 "$@" >"$out" || {
    cat "$out"
    return 1
  }
  cat "$out"
  diff <(printf '%s\n' "$expected") "$out" >/dev/null || {
    printf 'expected exactly:\n%s\n' "$expected"
    return 1
  }
}
three_rounds=$'round 1: whoami 200\nround 2: whoami 200\nround 3: whoami 200'
rejected_first=$'round 1: 401, reported the rejected token, retry: whoami 200\nround 2: whoami 200'
for entry in "${examples[@]}"; do
  name="${entry%%:*}"
  read -ra command <<<"${entry#*:}"
  step "$name: ROUNDS=3 INTERVAL=2, three times whoami 200" \
    example "$work/$name.out" "" 3 2 "$three_rounds" "${command[@]}"
done
# An SDK client with no broker-specific code, through the GCE metadata emulation.
google_auth_example() (
  # Only the broker may answer: no gcloud login or key file of this machine's.
  export GCE_METADATA_HOST="$listen" GCE_METADATA_IP="$listen" CLOUDSDK_CONFIG="$work/gcloud"
  unset GOOGLE_APPLICATION_CREDENTIALS
  example "$work/google-auth.out" "" 3 2 "$three_rounds" \
    "${CARGO_TARGET_DIR:-$ROOT/target}/sdk/venv/bin/python" examples/google-auth/client.py
)
step "google-auth: ROUNDS=3 INTERVAL=2, three times whoami 200" google_auth_example
# The 401 path: the first API call gets a spoiled token, the client reports it to the
# broker's refresh endpoint and retries with the token it gets back.
for entry in "${examples[@]}"; do
  name="${entry%%:*}"
  read -ra command <<<"${entry#*:}"
  step "$name: FORCE_REJECT_FIRST=1, reports the rejected token, then whoami 200" \
    example "$work/$name-401.out" 1 2 1 "$rejected_first" "${command[@]}"
done

# The broker's JSON error reaches the user, not just a status.
error_shown() {
  local out rc=0
  out="$(CREDENTIAL=no-such-credential ROUNDS=1 timeout 60 "$@" 2>&1)" || rc=$?
  echo "$out"
  ((rc != 0)) && grep -q 'unknown_credential.*no credential named' <<<"$out"
}
for entry in "${examples[@]}"; do
  name="${entry%%:*}"
  read -ra command <<<"${entry#*:}"
  step "$name: an unknown credential ends it with the broker's JSON error" error_shown "${command[@]}"
done

# clients NAME...: starts every example in the background, one round each; their pids
# in client_pids. expect_round NAME: waits for one, which must have printed one 200.
clients() {
  client_pids=()
  for entry in "${examples[@]}"; do
    name="${entry%%:*}"
    read -ra command <<<"${entry#*:}"
    ROUNDS=1 timeout 90 "${command[@]}" >"$work/$name-$1.out" 2>&1 &
    client_pids+=($!)
  done
}
expect_round() {
  local rc=0
  wait "$2" || rc=$?
  cat "$1"
  ((rc == 0)) && [[ $(cat "$1") == "round 1: whoami 200" ]]
}
each_client() {
  local i=0
  for entry in "${examples[@]}"; do
    name="${entry%%:*}"
    step "$name: $2" expect_round "$work/$name-$1.out" "${client_pids[$i]}"
    i=$((i + 1))
  done
}

# A sidecar starting: the clients start while nothing listens, the broker 4 s later.
kill -TERM "$broker_pid"
wait "$broker_pid" || true
clients refused
sleep 4
TOKEN_BROKER__SERVER__LISTEN="$listen" "$BIN" run --config "$work/broker.toml" 2>>"$work/broker.log" &
broker_pid=$!
pids+=("$broker_pid")
each_client refused "started before the broker, retried until it answered"

# No valid token for a while: the IdP fails every refresh until the token has expired
# and the broker answers 503 with Retry-After, and heals 3 s after the clients start.
fault() { curl -sS -X POST -H 'Content-Type: application/json' -d "$1" "$idp_url/admin/faults" >/dev/null; }
answers_503() { [[ $(curl -s -o /dev/null -w '%{http_code}' -H 'Token-Broker: 1' "$broker_url/token/demo") == 503 ]]; }
fault '{"status": 503, "count": 1000}'
wait_for 20 answers_503 || echo "the broker never answered 503"
clients unavailable
sleep 3
fault '{"count": 0}'
each_client unavailable "waited out 503 with Retry-After"

stats() { curl -sS "$idp_url/stats"; }
step "dev IdP: refreshes happened while clients ran, none replayed or revoked" \
  "$PY" -c 'import json, sys
s = json.loads(sys.argv[1]); print({k: s[k] for k in ("refresh_grants", "reuse_detected", "families_revoked")})
sys.exit(not (s["refresh_grants"] >= 3 and s["reuse_detected"] == 0 and s["families_revoked"] == 0))' "$(stats)"
no_secret_in_log() { ! grep -q -e dev-secret -e "$bootstrap" "$work/broker.log"; }
step "broker log names neither the client secret nor the bootstrap token" no_secret_in_log
shutdown() {
  kill -TERM "$broker_pid"
  local rc=0
  wait "$broker_pid" || rc=$?
  echo "exit status after SIGTERM: $rc"
  return "$rc"
}
step "broker exits 0 on SIGTERM (what Docker and Kubernetes send)" shutdown

section "f. Prometheus alerts and Grafana dashboard against a live /metrics"
"$BIN" dev --listen 127.0.0.1:0 >"$scratch/dev.out" 2>"$scratch/dev.err" &
pids+=($!)
wait_for 10 grep -q 'the broker on http://' "$scratch/dev.out" || { cat "$scratch/dev.err"; exit 1; }
dev_url="$(grep -o 'the broker on http://[0-9.]*:[0-9]*' "$scratch/dev.out" | grep -o 'http://.*')"
# Ready means the demo credential holds a token: its startup refresh is counted.
wait_for 15 "$BIN" probe --url "$dev_url" || { echo "dev broker never became ready"; cat "$scratch/dev.err"; exit 1; }
curl -sS --fail -o "$scratch/metrics.txt" "$dev_url/metrics"
echo "scraped $dev_url/metrics: $(grep -c '^token_broker_' "$scratch/metrics.txt") samples"
step "metrics_check.py: alerts and dashboard use only exposed metrics and labels" \
  "$PY" tests/deploy/metrics_check.py "$scratch/metrics.txt" --emit-rules "$scratch/dashboard-rules.yaml"
step "promtool check rules: alerts.yaml and the dashboard's expressions" \
  "$PROMTOOL" check rules deploy/prometheus/alerts.yaml "$scratch/dashboard-rules.yaml"
alert_tests() { (cd deploy/prometheus && "$PROMTOOL" test rules alerts.test.yaml); }
step "promtool test rules: alerts.test.yaml" alert_tests

section "summary"
echo "took $((SECONDS - started))s"
echo "$passed passed, $failed failed"
((failed == 0))
