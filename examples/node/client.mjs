// Call an API with tokens from token-broker, with Node's built-in fetch (Node >= 20).
//
// `TokenBroker#fetch` is a drop-in `fetch` that adds the token: it asks the broker for
// the token on every request (the broker refreshes ahead of expiry, so there is nothing
// to cache), and when the API still says 401 it reports that token to the broker
// instead of refreshing itself, then sends the request once more with the token it gets
// back. However many processes report the same token, the broker makes one refresh and
// all of them get its result. While the broker starts (a sidecar beside the app) it
// refuses connections, and while it has no valid token it answers 503 with Retry-After:
// both are waited out. Any other answer throws a `BrokerError` with the broker's error
// code and message.
//
// Environment: TOKEN_BROKER_URL, CREDENTIAL, API_URL, ROUNDS (0: forever), INTERVAL
// (seconds), FORCE_REJECT_FIRST=1 (spoil the first token so the 401 path runs).

import { setTimeout as sleep } from "node:timers/promises";

export class BrokerError extends Error {
  constructor(status, code, message) {
    super(`token-broker answered ${status}: ${code}: ${message}`);
    Object.assign(this, { status, code });
  }
}

export class TokenBroker {
  constructor(credential, { url = process.env.TOKEN_BROKER_URL ?? "http://127.0.0.1:8656", attempts = 30 } = {}) {
    this.base = `${url.replace(/\/+$/, "")}/token/${credential}`;
    this.attempts = attempts;
    this.retried = false; // whether the last request was sent again after a 401
    this.spoilNext = false; // for the demo: send a bad token once
  }

  token() {
    return this.#ask(this.base, {});
  }

  reportRejected(token) {
    return this.#ask(`${this.base}/refresh`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ rejected_token: token }),
    });
  }

  // `fetch(url, init)` with `Authorization: Bearer TOKEN`, sent once more after a 401.
  // A streamed body cannot be sent twice: pass a string, Buffer or FormData.
  async fetch(url, init = {}) {
    let token = await this.token();
    if (this.spoilNext) [token, this.spoilNext] = [`spoiled-${token}`, false];
    const withToken = (t) => ({ ...init, headers: { ...init.headers, Authorization: `Bearer ${t}` } });
    this.retried = false;
    const response = await fetch(url, withToken(token));
    if (response.status !== 401) return response;
    await response.arrayBuffer(); // read the body so the connection is reused
    this.retried = true;
    return fetch(url, withToken(await this.reportRejected(token)));
  }

  async #ask(url, init) {
    // Token endpoints demand this header, so a forged request (SSRF, a web page) cannot read tokens.
    const request = { ...init, headers: { ...init.headers, "Token-Broker": "1" } };
    for (let attempt = 1; attempt <= this.attempts; attempt++) {
      let response;
      try {
        response = await fetch(url, request);
      } catch (error) {
        if (error.cause?.code !== "ECONNREFUSED") throw error;
        await sleep(1000); // the broker is starting
        continue;
      }
      const body = await response.json();
      const retryAfter = Number(response.headers.get("retry-after"));
      if (response.status === 503 && retryAfter > 0) {
        await sleep(Math.min(retryAfter, 10) * 1000);
        continue;
      }
      if (!response.ok) throw new BrokerError(response.status, body.error, body.message);
      return body.access_token;
    }
    throw new BrokerError(503, "unavailable", `no token from ${url} after ${this.attempts} attempts`);
  }
}

const apiUrl = process.env.API_URL ?? "http://127.0.0.1:8657/api/whoami";
const rounds = Number(process.env.ROUNDS ?? 0);
const interval = Number(process.env.INTERVAL ?? 5);
const broker = new TokenBroker(process.env.CREDENTIAL ?? "demo");
broker.spoilNext = process.env.FORCE_REJECT_FIRST === "1";

for (let n = 1; rounds === 0 || n <= rounds; n++) {
  let status;
  try {
    const response = await broker.fetch(apiUrl);
    await response.arrayBuffer();
    status = response.status;
  } catch (error) {
    console.error(error.message);
    process.exit(1);
  }
  if (broker.retried) {
    console.log(`round ${n}: 401, reported the rejected token, retry: whoami ${status}`);
  } else {
    console.log(`round ${n}: whoami ${status}`);
  }
  if (status !== 200) process.exit(1);
  if (rounds === 0 || n < rounds) await sleep(interval * 1000);
}
