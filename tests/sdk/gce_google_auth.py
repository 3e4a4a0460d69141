"""google-auth against the broker's GCE metadata emulation, as an app would use it:
no broker-specific code, only GCE_METADATA_HOST / GCE_METADATA_IP in the environment.
Prints one JSON line with what the library got."""

import json

import google.auth
from google.auth import compute_engine, exceptions
from google.auth.transport.requests import Request

request = Request()
credentials, project = google.auth.default()
credentials.refresh(request)
explicit = compute_engine.Credentials()
explicit.refresh(request)
try:
    compute_engine.Credentials(service_account_email="nobody@elsewhere.iam.gserviceaccount.com").refresh(request)
    unknown = "no error"
except exceptions.RefreshError as e:
    unknown = str(e)
print(json.dumps({
    "kind": type(credentials).__name__,
    "project": project,
    "token": credentials.token,
    "explicit_token": explicit.token,
    "email": explicit.service_account_email,
    "valid": credentials.valid,
    "unknown_account": unknown,
}))
