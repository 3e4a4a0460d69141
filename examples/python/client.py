#!/usr/bin/env python3
"""Call an API with tokens from token-broker, as an httpx authentication class.

`BrokerAuth` plugs into httpx like any other auth: `httpx.Client(auth=BrokerAuth("demo"))`.
It asks the broker for the token on every request (the broker refreshes ahead of
expiry, so there is nothing to cache), and when the API still says 401 it reports that
token to the broker instead of refreshing itself, then sends the request once more with
the token it gets back. However many processes report the same token, the broker makes
one refresh and all of them get its result. While the broker starts (a sidecar beside
the app) it refuses connections, and while it has no valid token it answers 503 with
Retry-After: both are waited out. Any other answer raises `BrokerError` with the
broker's error code and message.

Needs httpx (pip install httpx). Environment: TOKEN_BROKER_URL, CREDENTIAL, API_URL,
ROUNDS (0: forever), INTERVAL (seconds), FORCE_REJECT_FIRST=1 (spoil the first token so
the 401 path runs).
"""

import os
import sys
import time

import httpx


class BrokerError(Exception):
    """The broker refused: `code` and `message` are its JSON error's."""

    def __init__(self, status, code, message):
        super().__init__(f"token-broker answered {status}: {code}: {message}")
        self.status, self.code, self.message = status, code, message


class BrokerAuth(httpx.Auth):
    """httpx auth: a token from token-broker on every request, one report on a 401."""

    def __init__(self, credential, broker_url=None, attempts=30):
        url = broker_url or os.environ.get("TOKEN_BROKER_URL", "http://127.0.0.1:8656")
        self.base = f"{url.rstrip('/')}/token/{credential}"
        self.attempts = attempts
        # Token endpoints demand this header, so a forged request (SSRF, a web page)
        # cannot read tokens.
        self.broker = httpx.Client(headers={"Token-Broker": "1"}, timeout=15)
        self.retried = False  # whether the last request was sent again after a 401
        self.spoil_next = False  # for the demo: send a bad token once

    def auth_flow(self, request):
        token = self.token()
        if self.spoil_next:
            token, self.spoil_next = "spoiled-" + token, False
        request.headers["Authorization"] = f"Bearer {token}"
        self.retried = False
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {self.report_rejected(token)}"
            self.retried = True
            yield request

    def token(self):
        return self._ask("GET", self.base)

    def report_rejected(self, token):
        return self._ask("POST", f"{self.base}/refresh", json={"rejected_token": token})

    def _ask(self, method, url, **kwargs):
        for _ in range(self.attempts):
            try:
                response = self.broker.request(method, url, **kwargs)
            except httpx.ConnectError:  # the broker is starting
                time.sleep(1)
                continue
            if response.status_code == 503 and "retry-after" in response.headers:
                time.sleep(min(float(response.headers["retry-after"]), 10))
                continue
            body = response.json()
            if response.status_code != 200:
                raise BrokerError(response.status_code, body.get("error"), body.get("message"))
            return body["access_token"]
        raise BrokerError(503, "unavailable", f"no token from {url} after {self.attempts} attempts")


def main():
    api_url = os.environ.get("API_URL", "http://127.0.0.1:8657/api/whoami")
    rounds = int(os.environ.get("ROUNDS", "0"))
    interval = float(os.environ.get("INTERVAL", "5"))
    auth = BrokerAuth(os.environ.get("CREDENTIAL", "demo"))
    auth.spoil_next = os.environ.get("FORCE_REJECT_FIRST") == "1"
    with httpx.Client(auth=auth, timeout=15) as api:
        n = 0
        while rounds == 0 or n < rounds:
            n += 1
            try:
                status = api.get(api_url).status_code
            except BrokerError as error:
                print(error, file=sys.stderr)
                return 1
            if auth.retried:
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
