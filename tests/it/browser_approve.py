#!/usr/bin/env python3
"""The browser of `login_setups.rs`: a headless browser driven over its DevTools pipe
(fd 3 in, fd 4 out, NUL-separated JSON). It opens the URL (argv[1]), clicks the dev
IdP's consent page's Approve button, and writes the text of the page it ends on to
argv[2]. The browser's program is $BROWSER_PROGRAM."""
import json
import os
import subprocess
import sys
import time

url, out = sys.argv[1], sys.argv[2]
r1, w1 = os.pipe()  # our commands -> browser fd 3
r2, w2 = os.pipe()  # browser fd 4 -> our events
browser = os.environ["BROWSER_PROGRAM"]
def fds():
    os.dup2(r1, 3); os.dup2(w2, 4)
proc = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu",
    "--remote-debugging-pipe", "--user-data-dir=" + os.path.dirname(out) + "/profile",
    "about:blank"], pass_fds=(3, 4), preexec_fn=fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
os.close(r1); os.close(w2)
buf = b""; ids = iter(range(1, 10**6))
def call(method, params=None, session=None):
    global buf
    i = next(ids)
    msg = {"id": i, "method": method, "params": params or {}}
    if session: msg["sessionId"] = session
    os.write(w1, json.dumps(msg).encode() + b"\0")
    while True:
        while b"\0" not in buf:
            chunk = os.read(r2, 65536)
            if not chunk: raise SystemExit("browser closed")
            buf += chunk
        line, buf = buf.split(b"\0", 1)
        reply = json.loads(line)
        if reply.get("id") == i:
            if "error" in reply: raise SystemExit(str(reply["error"]))
            return reply["result"]
def evaluate(session, expr):
    return call("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session)["result"].get("value")
def wait_for(session, expr, limit=15):
    end = time.time() + limit
    while time.time() < end:
        try:
            value = evaluate(session, expr)
            if value: return value
        except SystemExit: pass
        time.sleep(0.1)
    raise SystemExit("timed out waiting for " + expr)
try:
    target = call("Target.createTarget", {"url": url})["targetId"]
    session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    wait_for(session, "document.querySelector('button[value=approve]') !== null")
    evaluate(session, "document.querySelector('button[value=approve]').click(); true")
    text = wait_for(session, "document.title.includes('token-broker') && document.body.innerText")
    with open(out, "w") as page:
        page.write(text)
finally:
    try:
        os.write(w1, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        proc.wait(timeout=5)
    except Exception:
        proc.kill()
        proc.wait()
