#!/usr/bin/env python3
"""Call an API with tokens from token-broker, standard library only.

Demonstrates the client's whole part: ask the broker for the token every time (it
refreshes ahead of expiry, so there is nothing to cache), and when the API still says
401, report that token to the broker instead of refreshing yourself. However many
processes report the same token, the broker makes one refresh and all of them get its
result.

Environment: TOKEN_BROKER_URL, CREDENTIAL, API_URL, ROUNDS (0: forever), INTERVAL
(seconds), FORCE_REJECT_FIRST=1 (spoil the first token so the 401 path runs).
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

BROKER = os.environ.get("TOKEN_BROKER_URL", "http://127.0.0.1:8656").rstrip("/")
CREDENTIAL = os.environ.get("CREDENTIAL", "demo")
API_URL = os.environ.get("API_URL", "http://127.0.0.1:8657/api/whoami")
# Token endpoints demand this header, so a forged request (SSRF, a web page) cannot read tokens.
BROKER_HEADERS = {"Token-Broker": "1"}


def call(method, url, headers, body=None):
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:  # 4xx/5xx still carry a status and body
        return error.code, error.read()


def token_from(status, body):
    if status != 200:
        sys.exit(f"broker answered {status}: {body.decode(errors='replace')}")
    return json.loads(body)["access_token"]


def get_token():
    return token_from(*call("GET", f"{BROKER}/token/{CREDENTIAL}", BROKER_HEADERS))


def report_rejected(token):
    body = json.dumps({"rejected_token": token}).encode()
    headers = {**BROKER_HEADERS, "Content-Type": "application/json"}
    return token_from(*call("POST", f"{BROKER}/token/{CREDENTIAL}/refresh", headers, body))


def whoami(token):
    status, _ = call("GET", API_URL, {"Authorization": f"Bearer {token}"})
    return status


def main():
    rounds = int(os.environ.get("ROUNDS", "0"))
    interval = float(os.environ.get("INTERVAL", "5"))
    force_reject = os.environ.get("FORCE_REJECT_FIRST") == "1"
    n = 0
    while rounds == 0 or n < rounds:
        n += 1
        token = get_token()
        if force_reject and n == 1:
            token = "spoiled-" + token
        status = whoami(token)
        if status == 401:
            status = whoami(report_rejected(token))
            print(f"round {n}: 401, reported the rejected token, retry: whoami {status}", flush=True)
        else:
            print(f"round {n}: whoami {status}", flush=True)
        if status != 200:
            return 1
        if rounds == 0 or n < rounds:
            time.sleep(interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
