"""azure-identity's ManagedIdentityCredential against the broker's App Service managed
identity emulation: no broker-specific code, only IDENTITY_ENDPOINT and IDENTITY_HEADER
in the environment. Prints one JSON line with what the library got."""

import json
import os

from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ManagedIdentityCredential


def refusal(scope):
    try:
        ManagedIdentityCredential().get_token(scope)
        return "no error"
    except ClientAuthenticationError as e:
        return str(e)


token = ManagedIdentityCredential().get_token("https://management.azure.com/.default")
unknown = refusal("https://vault.azure.net/.default")
os.environ["IDENTITY_HEADER"] = "not-the-secret"
wrong_secret = refusal("https://management.azure.com/.default")
print(json.dumps({
    "token": token.token,
    "expires_on": token.expires_on,
    "unknown_resource": unknown,
    "wrong_secret": wrong_secret,
}))
