#!/usr/bin/env bash
# Call an API with tokens from token-broker, with curl alone.
#
# Demonstrates the client's whole part: ask the broker for the token every time (it
# refreshes ahead of expiry, so there is nothing to cache), and when the API still says
# 401, report that token to the broker instead of refreshing yourself. However many
# processes report the same token, the broker makes one refresh and all of them get it.
# While the broker starts (a sidecar beside the app) it refuses connections, and while
# it has no valid token it answers 503 with Retry-After: both are waited out. Any other
# error ends the script with the broker's JSON error on stderr.
# `Accept: text/plain` gets the bare token and the refresh call takes a form, so no JSON
# tool is needed. Tokens go to curl on stdin, never on its command line, where any local
# user could read them in the process list.
#
# Environment: TOKEN_BROKER_URL, CREDENTIAL, API_URL, ROUNDS (0: forever), INTERVAL
# (seconds), FORCE_REJECT_FIRST=1 (spoil the first token so the 401 path runs).
set -euo pipefail

broker_url="${TOKEN_BROKER_URL:-http://127.0.0.1:8656}"
broker_url="${broker_url%/}"
credential="${CREDENTIAL:-demo}"
api_url="${API_URL:-http://127.0.0.1:8657/api/whoami}"
rounds="${ROUNDS:-0}"
interval="${INTERVAL:-5}"
attempts=30 # per broker call, while it refuses connections or answers 503

# broker URL [CURL ARGS...]: prints the token. The header guards token endpoints against
# forged requests.
broker() {
  local url="$1" attempt rc status wait body headers
  shift
  body="$(mktemp)" headers="$(mktemp)"
  for ((attempt = 1; attempt <= attempts; attempt++)); do
    rc=0
    status="$(curl -sS -o "$body" -D "$headers" -w '%{http_code}' \
      -H 'Token-Broker: 1' -H 'Accept: text/plain' "$@" "$url" 2>/dev/null)" || rc=$?
    if ((rc == 7)); then # connection refused: the broker is starting
      sleep 1
      continue
    fi
    if ((rc == 0)) && [[ $status == 200 ]]; then
      cat "$body"
      rm -f "$body" "$headers"
      return 0
    fi
    if ((rc == 0)) && [[ $status == 503 ]]; then
      wait="$(tr -d '\r' <"$headers" | awk -F': *' 'tolower($1) == "retry-after" { print $2 }')"
      [[ $wait =~ ^[0-9]+$ ]] || wait=1
      sleep "$((wait < 10 ? wait : 10))"
      continue
    fi
    break
  done
  if ((rc != 0)); then
    echo "token-broker at $broker_url: curl failed (exit $rc)" >&2
  else
    echo "token-broker answered $status: $(cat "$body")" >&2
  fi
  rm -f "$body" "$headers"
  return 1
}

whoami() {
  curl -sS -o /dev/null -w '%{http_code}' -H @- "$api_url" <<<"Authorization: Bearer $1"
}

# The token goes to curl in a private file, read again on each attempt.
report_rejected() {
  local file rc=0
  file="$(mktemp)"
  printf '%s' "$1" >"$file"
  broker "$broker_url/token/$credential/refresh" --data-urlencode "rejected_token@$file" || rc=$?
  rm -f "$file"
  return "$rc"
}

n=0
while ((rounds == 0 || n < rounds)); do
  n=$((n + 1))
  token="$(broker "$broker_url/token/$credential")"
  if [[ "${FORCE_REJECT_FIRST:-}" == 1 && $n == 1 ]]; then
    token="spoiled-$token"
  fi
  status="$(whoami "$token")"
  if [[ $status == 401 ]]; then
    token="$(report_rejected "$token")"
    status="$(whoami "$token")"
    echo "round $n: 401, reported the rejected token, retry: whoami $status"
  else
    echo "round $n: whoami $status"
  fi
  [[ $status == 200 ]] || exit 1
  if ((rounds == 0 || n < rounds)); then sleep "$interval"; fi
done
