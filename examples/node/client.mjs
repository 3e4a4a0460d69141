// Call an API with tokens from token-broker, with Node's built-in fetch (Node >= 20).
//
// Demonstrates the client's whole part: ask the broker for the token every time (it
// refreshes ahead of expiry, so there is nothing to cache), and when the API still says
// 401, report that token to the broker instead of refreshing yourself. However many
// processes report the same token, the broker makes one refresh and all of them get its
// result.
//
// Environment: TOKEN_BROKER_URL, CREDENTIAL, API_URL, ROUNDS (0: forever), INTERVAL
// (seconds), FORCE_REJECT_FIRST=1 (spoil the first token so the 401 path runs).

import { setTimeout as sleep } from "node:timers/promises";

const broker = (process.env.TOKEN_BROKER_URL ?? "http://127.0.0.1:8656").replace(/\/+$/, "");
const credential = process.env.CREDENTIAL ?? "demo";
const apiUrl = process.env.API_URL ?? "http://127.0.0.1:8657/api/whoami";
const rounds = Number(process.env.ROUNDS ?? 0);
const interval = Number(process.env.INTERVAL ?? 5);
const forceReject = process.env.FORCE_REJECT_FIRST === "1";
// Token endpoints demand this header, so a forged request (SSRF, a web page) cannot read tokens.
const brokerHeaders = { "Token-Broker": "1" };

async function tokenFrom(response) {
  const body = await response.json();
  if (!response.ok) throw new Error(`broker answered ${response.status}: ${body.error}: ${body.message}`);
  return body.access_token;
}

const getToken = async () =>
  tokenFrom(await fetch(`${broker}/token/${credential}`, { headers: brokerHeaders }));

const reportRejected = async (token) =>
  tokenFrom(
    await fetch(`${broker}/token/${credential}/refresh`, {
      method: "POST",
      headers: { ...brokerHeaders, "Content-Type": "application/json" },
      body: JSON.stringify({ rejected_token: token }),
    }),
  );

async function whoami(token) {
  const response = await fetch(apiUrl, { headers: { Authorization: `Bearer ${token}` } });
  await response.arrayBuffer(); // read the body so the connection is reused
  return response.status;
}

for (let n = 1; rounds === 0 || n <= rounds; n++) {
  let token = await getToken();
  if (forceReject && n === 1) token = `spoiled-${token}`;
  let status = await whoami(token);
  if (status === 401) {
    status = await whoami(await reportRejected(token));
    console.log(`round ${n}: 401, reported the rejected token, retry: whoami ${status}`);
  } else {
    console.log(`round ${n}: whoami ${status}`);
  }
  if (status !== 200) process.exit(1);
  if (rounds === 0 || n < rounds) await sleep(interval * 1000);
}
