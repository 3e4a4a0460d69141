"""Hundreds of concurrent google-auth refreshes through the GCE emulation. The threads
are ready before the broker exists: the port comes on stdin, then every thread refreshes
at once. Prints one JSON line: the distinct tokens served and how many calls failed."""

import json
import os
import sys
import threading

from google.auth.transport.requests import Request

THREADS = int(sys.argv[1])
port = sys.stdin.readline().strip()
os.environ["GCE_METADATA_HOST"] = f"127.0.0.1:{port}"
os.environ["GCE_METADATA_IP"] = f"127.0.0.1:{port}"
# The metadata host is read when the module is imported, so only after the port is known.
from google.auth import compute_engine  # noqa: E402

tokens, errors = [], []
start = threading.Barrier(THREADS)


def refresh():
    credentials = compute_engine.Credentials()
    request = Request()
    start.wait()
    try:
        credentials.refresh(request)
        tokens.append(credentials.token)
    except Exception as e:  # every failure is reported, none hidden
        errors.append(str(e))


threads = [threading.Thread(target=refresh) for _ in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"tokens": sorted(set(tokens)), "served": len(tokens), "errors": errors[:3], "failed": len(errors)}))
