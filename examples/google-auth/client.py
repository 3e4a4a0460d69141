#!/usr/bin/env python3
"""Call an API with tokens from token-broker without one line of broker-specific code.

Google's auth library looks for the GCE metadata server at GCE_METADATA_HOST (and pings
GCE_METADATA_IP); with `[emulate.gce]` configured the broker answers there, so the
ordinary `google.auth.default()` and `AuthorizedSession` get the broker's token, with its
single flight and refresh timer behind them. This is what an existing app already does.

Needs google-auth and requests (requirements.txt). Environment: GCE_METADATA_HOST and
GCE_METADATA_IP (the broker's HOST:PORT), API_URL, ROUNDS (0: forever), INTERVAL
(seconds).
"""

import os
import sys
import time

import google.auth
from google.auth.transport.requests import AuthorizedSession

API_URL = os.environ.get("API_URL", "http://127.0.0.1:8657/api/whoami")


def main():
    rounds = int(os.environ.get("ROUNDS", "0"))
    interval = float(os.environ.get("INTERVAL", "5"))
    credentials, _project = google.auth.default()
    session = AuthorizedSession(credentials)
    n = 0
    while rounds == 0 or n < rounds:
        n += 1
        status = session.get(API_URL, timeout=15).status_code
        print(f"round {n}: whoami {status}", flush=True)
        if status != 200:
            return 1
        if rounds == 0 or n < rounds:
            time.sleep(interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
