#!/usr/bin/env bash
# Call an API with tokens from token-broker, with curl alone.
#
# Demonstrates the client's whole part: ask the broker for the token every time (it
# refreshes ahead of expiry, so there is nothing to cache), and when the API still says
# 401, report that token to the broker instead of refreshing yourself. However many
# processes report the same token, the broker makes one refresh and all of them get it.
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

# The header guards token endpoints against forged requests; --fail-with-body exits
# non-zero on an error status and still shows the broker's JSON error.
broker() {
  curl -sS --fail-with-body -H 'Token-Broker: 1' -H 'Accept: text/plain' "$@"
}

whoami() {
  curl -sS -o /dev/null -w '%{http_code}' -H @- "$api_url" <<<"Authorization: Bearer $1"
}

report_rejected() {
  printf '%s' "$1" | broker --data-urlencode 'rejected_token@-' "$broker_url/token/$credential/refresh"
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
