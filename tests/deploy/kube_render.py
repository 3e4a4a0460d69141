#!/usr/bin/env python3
"""Renders deploy/kubernetes offline, the way `kubectl apply -k` would, for schema
validation, and checks what a schema cannot: the pieces agree with each other.

    python3 tests/deploy/kube_render.py OUT_DIR     (needs PyYAML and jsonpatch)

Writes OUT_DIR/base.yaml, OUT_DIR/plain-sidecar.yaml and OUT_DIR/add-to-existing.yaml.
Kustomize is a Go binary that no package registry here ships, so this does the small part
of its work these files use: resources, configMapGenerator (no hash suffix), images, and
JSON 6902 patches; and a strategic merge by name for the add-to-existing patch, which
must turn a Deployment without the broker into base/deployment.yaml's.
"""

import copy
import sys
import tomllib
from pathlib import Path

import jsonpatch
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
failures = []


def check(ok, what):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


def load_all(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def pod_containers(spec):
    return spec.get("initContainers", []) + spec.get("containers", [])


RENDERED = {}


def render(directory):
    """The objects `kubectl apply -k directory` would send, generators without hashes."""
    if directory in RENDERED:  # a base shared by overlays is checked once
        return copy.deepcopy(RENDERED[directory])
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objects = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        check(path.exists(), f"{directory.name}: resource {resource} exists")
        objects += render(path.resolve()) if path.is_dir() else load_all(path)
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for name in generator.get("files", []):
            check((directory / name).is_file(), f"{directory.name}: configMapGenerator file {name} exists")
            data[Path(name).name] = (directory / name).read_text()
        objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": generator["name"]}, "data": data})
    for image in kustomization.get("images", []):
        for obj in objects:
            spec = obj.get("spec", {}).get("template", {}).get("spec", {})
            for container in pod_containers(spec):
                if container["image"].split(":")[0] == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        matched = [o for o in objects if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
        check(len(matched) == 1, f"{directory.name}: patch target {target['kind']}/{target['name']} exists")
        for obj in matched:
            ops = yaml.safe_load(patch["patch"])
            obj.update(jsonpatch.apply_patch(obj, ops))
    listed = set(kustomization.get("resources", [])) | {"kustomization.yaml"}
    text = (directory / "kustomization.yaml").read_text()
    for path in sorted(directory.glob("*.yaml")):
        if path.name not in listed:
            check(f"# - {path.name}" in text, f"{directory.name}: {path.name} is offered in a comment")
    RENDERED[directory] = copy.deepcopy(objects)
    return objects


def merge(base, patch):
    """Strategic merge for what the patch uses: maps merge, lists of named items merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in base + patch):
        merged = [copy.deepcopy(i) for i in base]
        for item in patch:
            index = next((n for n, m in enumerate(merged) if m["name"] == item["name"]), None)
            if index is None:
                merged.append(copy.deepcopy(item))
            else:
                merged[index] = merge(merged[index], item)
        return merged
    return copy.deepcopy(patch)


def deployment(objects):
    return next(o for o in objects if o["kind"] == "Deployment")


def check_base(objects):
    spec = deployment(objects)["spec"]["template"]["spec"]
    broker = next((c for c in spec.get("initContainers", []) if c["name"] == "token-broker"), None)
    check(broker is not None and broker.get("restartPolicy") == "Always", "base: the broker is a native sidecar")
    if broker is None:
        return
    configmap = next(o for o in objects if o["kind"] == "ConfigMap")
    config = tomllib.loads(configmap["data"]["config.toml"])
    mounts = {m["name"]: m["mountPath"] for m in broker["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    server = config["server"]
    check(server["listen"].startswith("127.0.0.1:"), "base: the token API listens on loopback only")
    ops_port = int(server.get("ops_listen", ":0").rsplit(":", 1)[1])
    ports = broker.get("ports", [])
    check(len(ports) == 1 and ports[0]["name"] == "ops" and ports[0]["containerPort"] == ops_port,
          f"base: the broker's one containerPort is the config's ops port {ops_port}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/readyz")):
        get = broker.get(probe, {}).get("httpGet", {})
        check(get.get("path") == path and get.get("port") == "ops", f"base: {probe} is httpGet {path} on the ops port")
    annotations = deployment(objects)["spec"]["template"]["metadata"].get("annotations", {})
    check(annotations.get("prometheus.io/scrape") == "true" and annotations.get("prometheus.io/port") == str(ops_port)
          and annotations.get("prometheus.io/path") == "/metrics", "base: Prometheus scrapes /metrics on the ops port")
    check_policy(next(o for o in objects if o["kind"] == "NetworkPolicy"), spec)
    config_volume = next(n for n, v in volumes.items() if "configMap" in v)
    check(volumes[config_volume]["configMap"]["name"] == configmap["metadata"]["name"]
          and mounts[config_volume] + "/config.toml" == broker["args"][broker["args"].index("--config") + 1],
          "base: the ConfigMap is mounted where --config reads it")
    secret = next(o for o in objects if o["kind"] == "Secret")
    secret_volume = next(n for n, v in volumes.items() if "secret" in v)
    check(volumes[secret_volume]["secret"]["secretName"] == secret["metadata"]["name"],
          "base: the Secret volume names secret.yaml's Secret")
    for name, credential in config["credentials"].items():
        for field in ("client_secret", "refresh_token"):
            path = Path(credential.get(field, {}).get("file", "/nowhere"))
            check(str(path.parent) == mounts[secret_volume] and path.name in secret["stringData"],
                  f"base: {name}.{field} is a key of the mounted Secret")
    state_volume = next(n for n, v in volumes.items() if "emptyDir" in v or "persistentVolumeClaim" in v)
    check(config["state"]["dir"].startswith(mounts[state_volume] + "/"),
          "base: state.dir is a subdirectory of the state volume (an emptyDir is world-writable)")
    context = broker["securityContext"]
    check(context.get("runAsNonRoot") and context.get("runAsUser") == 65532 and context.get("readOnlyRootFilesystem")
          and context.get("allowPrivilegeEscalation") is False and context["capabilities"]["drop"] == ["ALL"]
          and context["seccompProfile"]["type"] == "RuntimeDefault", "base: the broker's securityContext is locked down")


def check_policy(policy, spec):
    """The policy admits the ops port to Prometheus alone, and the app's ports to anyone."""
    app_ports = {p["name"] for c in spec["containers"] for p in c.get("ports", [])}
    rules = policy["spec"].get("ingress", [])
    check(all(r.get("ports") for r in rules), "networkpolicy: every rule names its ports")
    ops_rules = [r for r in rules if any(p["port"] == "ops" for p in r.get("ports", []))]
    check(len(ops_rules) == 1 and [p["port"] for p in ops_rules[0]["ports"]] == ["ops"],
          "networkpolicy: one rule admits the ops port, and only it")
    for rule in ops_rules:
        sources = rule.get("from", [])
        check(len(sources) > 0 and all("prometheus" in str(s.get("podSelector", {})) for s in sources),
              "networkpolicy: only Prometheus's pods may reach the ops port")
    others = {p["port"] for r in rules if r not in ops_rules for p in r["ports"]}
    check(others <= app_ports, f"networkpolicy: other rules admit only the app's ports {sorted(app_ports)}")


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)

    base = render(KUBE / "base")
    check_base(base)
    (out / "base.yaml").write_text(yaml.safe_dump_all(base, sort_keys=False))

    plain = render(KUBE / "plain-sidecar")
    spec = deployment(plain)["spec"]["template"]["spec"]
    check("initContainers" not in spec and spec["containers"][0]["name"] == "token-broker"
          and "restartPolicy" not in spec["containers"][0], "plain-sidecar: the broker is the first plain container")
    (out / "plain-sidecar.yaml").write_text(yaml.safe_dump_all(plain, sort_keys=False))

    # The add-to-existing patch, applied to base's Deployment stripped of the broker, must
    # give base's Deployment back: the two copies of the sidecar cannot drift apart.
    wanted = next(o for o in load_all(KUBE / "base" / "deployment.yaml") if o["kind"] == "Deployment")
    existing = copy.deepcopy(wanted)
    pod = existing["spec"]["template"]["spec"]
    del pod["initContainers"], pod["securityContext"]["fsGroup"]
    existing["spec"]["template"]["metadata"].pop("annotations", None)
    pod["volumes"] = [v for v in pod["volumes"] if not v["name"].startswith("token-broker")]
    app = pod["containers"][0]
    app["env"] = [e for e in app["env"] if e["name"] != "TOKEN_BROKER_URL"]
    for holder, key in ((pod, "volumes"), (app, "env")):
        if not holder[key]:
            del holder[key]
    patch = load_all(KUBE / "add-to-existing" / "sidecar-patch.yaml")[0]
    merged = merge(existing, patch)
    check(merged == wanted, "add-to-existing: the patch turns a Deployment without the broker into base's")
    (out / "add-to-existing.yaml").write_text(yaml.safe_dump_all([merged], sort_keys=False))

    if failures:
        print(f"{len(failures)} Kubernetes check(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
