"""The Python kubernetes client with an exec credential plugin (the kubeconfig in
argv[1]): it runs the plugin, then calls the cluster's /api/whoami with the token.
Prints one JSON line: the status and the token the client sent."""

import json
import sys

from kubernetes import client, config

config.load_kube_config(config_file=sys.argv[1])
api = client.ApiClient()
method, url, headers, body, post_params = api.param_serialize(
    method="GET", resource_path="/api/whoami", auth_settings=["BearerToken"]
)
response = api.call_api(method, url, header_params=headers)
print(json.dumps({
    "status": response.status,
    "token": headers.get("authorization", "").removeprefix("Bearer ").strip(),
}))
