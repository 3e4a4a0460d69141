#!/usr/bin/env python3
"""Consistency checks of deploy/compose that the schema cannot make, since no Docker
engine is needed: the files it mounts exist, the dev IdP and the brokers agree on the
client and the bootstrap token, every address points at a port something listens on,
and (in the Redis variant) the brokers' Redis user, password, key prefix and encryption
key agree with the Redis ACL file.

    python3 tests/deploy/compose_check.py [BINARY [COMPOSE_FILE...]]
    (BINARY or env TOKEN_BROKER_BIN; default files: docker-compose.yml and
    docker-compose.redis.yml; needs PyYAML)
"""

import base64
import hashlib
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
CONFIG_TARGET = "/etc/token-broker/config.toml"
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


def check_mounts(services, secret_files, config_files):
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


def check_credentials(name, broker, config, idp, secret_value):
    for cred_name, cred in config["credentials"].items():
        check(cred["client_id"] == idp.get("--client-id"), f"{name}/{cred_name}: client_id is the IdP's")
        check(cred["client_secret"] == {"file": "/run/secrets/client_secret"}
              and secret_value("client_secret") == idp.get("--client-secret"),
              f"{name}/{cred_name}: the client_secret secret is the IdP's")
        check(cred["refresh_token"] == {"file": "/run/secrets/refresh_token"}
              and secret_value("refresh_token") == idp.get("--initial-refresh-token"),
              f"{name}/{cred_name}: the bootstrap token is the IdP's --initial-refresh-token")
        token_url = urlsplit(cred["token_url"])
        check(str(token_url.port) == port(idp["--listen"]) and broker.get("network_mode") == "service:idp",
              f"{name}/{cred_name}: token_url {cred['token_url']} reaches the IdP in its network namespace")
        grace = cred.get("idp_reuse_grace")
        if grace is not None:
            check(idp.get("--reuse-grace") == grace,
                  f"{name}/{cred_name}: idp_reuse_grace {grace} is the IdP's --reuse-grace")


def acl_users(text):
    """user name -> rule words, from a Redis ACL file."""
    users = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "user":
            users[words[1]] = words[2:]
    return users


def check_redis(name, broker, state, services, secret_files):
    url = urlsplit(state["url"])
    redis = services.get(url.hostname)
    check(redis is not None, f"{name}: state.url {state['url']} names a service")
    if redis is None:
        return
    check(str(url.port or 6379) == "6379" and "--port" not in redis.get("command", []),
          f"{name}: state.url's port is the one {url.hostname} listens on")
    check("service_healthy" == broker.get("depends_on", {}).get(url.hostname, {}).get("condition"),
          f"{name}: starts once {url.hostname} is healthy")
    command = redis.get("command", [])
    acl_path = next((command[i + 1] for i, w in enumerate(command[:-1]) if w == "--aclfile"), "")
    acl_secret = acl_path.removeprefix("/run/secrets/")
    check(acl_secret in secret_files and acl_secret in redis.get("secrets", []),
          f"{url.hostname}: --aclfile {acl_path} is a secret it mounts")
    users = acl_users(secret_files[acl_secret].read_text()) if acl_secret in secret_files else {}
    rules = users.get(state.get("username", "default"), [])
    check("on" in rules, f"{name}: the ACL has user {state.get('username')} enabled")
    password_secret = state["password"]["file"].removeprefix("/run/secrets/")
    check(password_secret in broker.get("secrets", []), f"{name}: mounts the {password_secret} secret")
    password = secret_files[password_secret].read_text().strip()
    digest = hashlib.sha256(password.encode()).hexdigest()
    check(f"#{digest}" in rules or f">{password}" in rules,
          f"{name}: the {password_secret} secret is the ACL user's password")
    prefix = state.get("key_prefix", "token-broker:")
    check(f"~{prefix}*" in rules and f"&{prefix}*" in rules,
          f"{name}: the ACL grants the keys and channel under key_prefix {prefix}")
    key_secret = state["encryption_key"]["file"].removeprefix("/run/secrets/")
    check(key_secret in broker.get("secrets", []), f"{name}: mounts the {key_secret} secret")
    key = base64.b64decode(secret_files[key_secret].read_text().strip(), validate=True)
    check(len(key) == 32, f"{name}: the {key_secret} secret is 32 bytes in base64")
    check("dir" not in state, f"{name}: no state.dir with the redis backend")


def check_file(path, binary):
    print(f"{path.relative_to(ROOT)}:")
    compose = yaml.safe_load(path.read_text())
    services = compose["services"]
    secret_files = {name: DIR / spec["file"] for name, spec in compose.get("secrets", {}).items()}
    config_files = {name: DIR / spec["file"] for name, spec in compose.get("configs", {}).items()}
    check_mounts(services, secret_files, config_files)

    idp = flags(services["idp"]["command"][1:])
    idp_help = subprocess.run([binary, "dev-idp", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in idp:
        check(re.search(rf"\s{re.escape(flag)}\b", idp_help) is not None, f"idp: {flag} is in `dev-idp --help`")
    secret_value = lambda name: secret_files[name].read_text().strip()

    brokers = {name: s for name, s in services.items()
               if any(c.get("target") == CONFIG_TARGET for c in s.get("configs", []))}
    check(len(brokers) >= 1, "at least one broker")
    published = [port(p) for p in services["idp"].get("ports", [])]
    aliases = services["idp"].get("networks", {}).get("default", {}).get("aliases", [])
    listen_ports = {}
    configs = {}
    for name, broker in brokers.items():
        source = next(c["source"] for c in broker["configs"] if c["target"] == CONFIG_TARGET)
        config = tomllib.loads(config_files[source].read_text())
        configs[name] = config
        check_credentials(name, broker, config, idp, secret_value)
        env = broker.get("environment", {})
        listen = env.get("TOKEN_BROKER__SERVER__LISTEN", config["server"]["listen"])
        listen_ports[name] = port(listen)
        check(listen_ports[name] in published, f"{name}: its port {listen_ports[name]} is published (on idp)")
        if "TOKEN_BROKER_URL" in env:
            check(str(urlsplit(env["TOKEN_BROKER_URL"]).port) == listen_ports[name],
                  f"{name}: the health check asks its own port {listen_ports[name]}")
        else:
            check(listen_ports[name] == "8656", f"{name}: listens where the image's health check asks")
        state = config["state"]
        if state.get("backend") == "redis":
            check_redis(name, broker, state, services, secret_files)
        else:
            state_dir = state["dir"]
            check(any(isinstance(v, str) and state_dir.startswith(v.split(":")[-1] + "/")
                      for v in broker.get("volumes", [])),
                  f"{name}: state.dir {state_dir} is inside a volume")
    check(len(set(listen_ports.values())) == len(listen_ports), "the brokers listen on different ports")

    for name, service in services.items():
        env = service.get("environment", {})
        if "TOKEN_BROKER_URL" in env and name not in brokers:
            url, api = urlsplit(env["TOKEN_BROKER_URL"]), urlsplit(env["API_URL"])
            healthy = [b for b, d in service.get("depends_on", {}).items() if d.get("condition") == "service_healthy"]
            target = [b for b in healthy if b in brokers and listen_ports[b] == str(url.port)]
            check(url.hostname in aliases + ["idp"] and len(target) == 1,
                  f"{name}: TOKEN_BROKER_URL {env['TOKEN_BROKER_URL']} reaches a broker it waits for")
            check(api.hostname == "idp" and str(api.port) == port(idp["--listen"]) and api.path == "/api/whoami",
                  f"{name}: API_URL {env['API_URL']} reaches the IdP's whoami")
        if "GCE_METADATA_HOST" in env and name not in brokers:
            check_gce_client(name, service, env, brokers, configs, listen_ports, aliases, idp)


def check_gce_client(name, service, env, brokers, configs, listen_ports, aliases, idp):
    """An SDK client that finds the broker as the GCE metadata server reaches a broker
    it waits for, which emulates GCE and accepts the name it is called by."""
    host = env["GCE_METADATA_HOST"]
    hostname, _, host_port = host.rpartition(":")
    check(env.get("GCE_METADATA_IP") == host, f"{name}: GCE_METADATA_IP is GCE_METADATA_HOST (google-auth pings it)")
    healthy = [b for b, d in service.get("depends_on", {}).items() if d.get("condition") == "service_healthy"]
    target = [b for b in healthy if b in brokers and listen_ports[b] == host_port]
    check(hostname in aliases + ["idp"] and len(target) == 1,
          f"{name}: GCE_METADATA_HOST {host} reaches a broker it waits for")
    for broker in target:
        config = configs[broker]
        gce = config.get("emulate", {}).get("gce", {})
        accounts = gce.get("service_accounts", {})
        check(accounts.get("default") in config.get("credentials", {}),
              f"{name}: {broker} emulates GCE with a `default` account of one of its credentials")
        check(hostname in config.get("server", {}).get("allowed_hosts", []),
              f"{name}: {broker} accepts the Host name {hostname}")
    api = urlsplit(env["API_URL"])
    check(api.hostname == "idp" and str(api.port) == port(idp["--listen"]) and api.path == "/api/whoami",
          f"{name}: API_URL {env['API_URL']} reaches the IdP's whoami")


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TOKEN_BROKER_BIN", "target/debug/token-broker")
    files = [Path(f).resolve() for f in sys.argv[2:]] or [DIR / "docker-compose.yml", DIR / "docker-compose.redis.yml"]
    for path in files:
        check_file(path, binary)
    if failures:
        print(f"{len(failures)} compose check(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
