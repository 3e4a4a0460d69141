#!/usr/bin/env python3
"""Consistency checks of deploy/compose that the schema cannot make, since no Docker
engine is needed: the files it mounts exist, the dev IdP and the broker agree on the
client and the bootstrap token, and every address points at a port something listens on.

    python3 tests/deploy/compose_check.py [BINARY]     (or env TOKEN_BROKER_BIN; needs PyYAML)
"""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
DIR = ROOT / "deploy" / "compose"
failures = []


def check(ok, what):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


def flags(command):
    """--name=value and --name value pairs of a command list."""
    found, words = {}, list(command)
    while words:
        word = words.pop(0)
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            found[name] = value if eq else (words.pop(0) if words and not words[0].startswith("--") else "")
    return found


def port(address):
    return address.rsplit(":", 1)[1]


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TOKEN_BROKER_BIN", "target/debug/token-broker")
    compose = yaml.safe_load((DIR / "docker-compose.yml").read_text())
    services = compose["services"]
    secret_files = {name: DIR / spec["file"] for name, spec in compose.get("secrets", {}).items()}
    config_files = {name: DIR / spec["file"] for name, spec in compose.get("configs", {}).items()}

    for name, path in {**secret_files, **config_files}.items():
        check(path.is_file(), f"{name}: {path.relative_to(ROOT)} exists")
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("."):
                check((DIR / source).exists(), f"{name}: mounted {source} exists")
            if isinstance(volume, str) and volume.count(":") >= 1 and source.startswith("."):
                target = volume.split(":")[1]
                script = next((w for w in service.get("command", []) if w.startswith(target + "/")), None)
                if script:
                    check((DIR / source / script[len(target) + 1:]).is_file(),
                          f"{name}: runs {script}, which the mount provides")

    idp = flags(services["idp"]["command"][1:])
    idp_help = subprocess.run([binary, "dev-idp", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in idp:
        check(re.search(rf"\s{re.escape(flag)}\b", idp_help) is not None, f"idp: {flag} is in `dev-idp --help`")

    broker = services["broker"]
    config_target = {c["source"]: c["target"] for c in broker.get("configs", [])}
    config = tomllib.loads(config_files["broker-config"].read_text())
    check(config_target.get("broker-config") == "/etc/token-broker/config.toml",
          "broker: config mounted where the image's CMD reads it")
    secret_value = lambda name: secret_files[name].read_text().strip()
    for cred_name, cred in config["credentials"].items():
        check(cred["client_id"] == idp.get("--client-id"), f"{cred_name}: client_id is the IdP's")
        check(cred["client_secret"] == {"file": "/run/secrets/client_secret"}
              and secret_value("client_secret") == idp.get("--client-secret"),
              f"{cred_name}: the client_secret secret is the IdP's")
        check(cred["refresh_token"] == {"file": "/run/secrets/refresh_token"}
              and secret_value("refresh_token") == idp.get("--initial-refresh-token"),
              f"{cred_name}: the bootstrap token is the IdP's --initial-refresh-token")
        token_url = urlsplit(cred["token_url"])
        check(str(token_url.port) == port(idp["--listen"]) and broker.get("network_mode") == "service:idp",
              f"{cred_name}: token_url {cred['token_url']} reaches the IdP in its network namespace")
    state_dir = config["state"]["dir"]
    check(any(isinstance(v, str) and state_dir.startswith(v.split(":")[-1] + "/") for v in broker.get("volumes", [])),
          f"broker: state.dir {state_dir} is inside a volume")

    broker_port = port(config["server"]["listen"])
    aliases = services["idp"].get("networks", {}).get("default", {}).get("aliases", [])
    for name, service in services.items():
        env = service.get("environment", {})
        if "TOKEN_BROKER_URL" in env:
            url, api = urlsplit(env["TOKEN_BROKER_URL"]), urlsplit(env["API_URL"])
            check(url.hostname in aliases + ["idp"] and str(url.port) == broker_port,
                  f"{name}: TOKEN_BROKER_URL {env['TOKEN_BROKER_URL']} reaches the broker")
            check(api.hostname == "idp" and str(api.port) == port(idp["--listen"]) and api.path == "/api/whoami",
                  f"{name}: API_URL {env['API_URL']} reaches the IdP's whoami")
            check(service.get("depends_on", {}).get("broker", {}).get("condition") == "service_healthy",
                  f"{name}: starts once the broker is healthy")

    if failures:
        print(f"{len(failures)} compose check(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
