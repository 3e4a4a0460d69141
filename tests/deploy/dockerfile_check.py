#!/usr/bin/env python3
"""Static checks of the Dockerfile that a linter cannot make, since no Docker engine
is needed to run them: they tie the image to this repository and to the real binary.

    python3 tests/deploy/dockerfile_check.py [BINARY]     (or env TOKEN_BROKER_BIN)

Checks: the final stage runs as a non-root user; every COPY source exists in the build
context and survives .dockerignore, or names an earlier stage that produces it; so do
the files Cargo.toml names; the
release build is `cargo build --release --locked`; ENTRYPOINT and HEALTHCHECK run the
crate's binary; the CMD's sub-command and flags, and `probe`, exist in the built
binary's --help; EXPOSE matches the binary's default port.
"""

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
failures = []


def check(ok, what):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


def instructions(text):
    """(keyword, arguments) per instruction, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    result = []
    for line in logical:
        keyword, _, rest = line.strip().partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def stages(parsed):
    """[{name, base, body: [(keyword, args)]}] in order."""
    found = []
    for keyword, args in parsed:
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            found.append({"name": name, "base": words[0], "body": []})
        elif found:
            found[-1]["body"].append((keyword, args))
    return found


def exec_form(args):
    """The list of an exec-form (JSON) instruction; None for shell form."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def ignored(path, patterns):
    """Docker's rule: the last matching pattern wins; a path matches through its parents."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, glob) for c in candidates):
            excluded = not negate
    return excluded


def dockerignore_patterns():
    path = ROOT / ".dockerignore"
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def help_text(binary, *args):
    return subprocess.run([binary, *args, "--help"], capture_output=True, text=True, check=True).stdout


def subcommands(help_output):
    section = help_output.split("Commands:", 1)[1].split("\n\n", 1)[0]
    return {line.split()[0] for line in section.splitlines() if line.strip()}


def copy_sources(args):
    """(flags, sources) of a COPY instruction in shell or exec form."""
    words = exec_form(args) or shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    return flags, paths[:-1]


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TOKEN_BROKER_BIN", "target/debug/token-broker")
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    bin_name = manifest.get("bin", [{}])[0].get("name", manifest["package"]["name"])
    all_stages = stages(instructions((ROOT / "Dockerfile").read_text()))
    final = all_stages[-1]
    body = final["body"]
    patterns = dockerignore_patterns()

    print(f"Dockerfile: {len(all_stages)} stages, final FROM {final['base']}")
    users = [args for keyword, args in body if keyword == "USER"]
    user = users[-1].split(":")[0] if users else None
    base_nonroot = final["base"].endswith(":nonroot")
    check(
        (user is not None and user not in ("root", "0")) or (user is None and base_nonroot),
        f"final stage runs as a non-root user (USER {user}, base {final['base']})",
    )

    for index, stage in enumerate(all_stages):
        earlier = {s["name"]: s for s in all_stages[:index] if s["name"]}
        for keyword, args in stage["body"]:
            if keyword not in ("COPY", "ADD"):
                continue
            flags, sources = copy_sources(args)
            origin = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            for source in sources:
                if origin is None:
                    exists = bool(list(ROOT.glob(source)))
                    check(exists and not ignored(source, patterns),
                          f"COPY {source}: in the build context and not in .dockerignore")
                else:
                    producer = earlier.get(origin)
                    made = producer is not None and any(
                        re.search(rf"{re.escape(source)}(\s|$)", a) for k, a in producer["body"] if k == "RUN"
                    )
                    check(made, f"COPY --from={origin} {source}: an earlier stage makes it")

    # Cargo refuses a manifest whose explicit targets or build script are missing, so
    # whatever Cargo.toml names must reach the build context too.
    named = [t["path"] for kind in ("bin", "lib", "test", "bench", "example")
             for t in (manifest.get(kind) if isinstance(manifest.get(kind), list) else [manifest.get(kind, {})])
             if "path" in t]
    build = manifest["package"].get("build")
    named += [build] if isinstance(build, str) else []
    for path in named:
        check((ROOT / path).exists() and not ignored(path, patterns),
              f"Cargo.toml names {path}: in the build context and not in .dockerignore")

    runs = [args for stage in all_stages for keyword, args in stage["body"] if keyword == "RUN"]
    check(any(re.search(r"\bcargo build --release --locked\b", r) for r in runs),
          "the build runs `cargo build --release --locked`")

    entrypoint = next((exec_form(a) for k, a in reversed(body) if k == "ENTRYPOINT"), None)
    check(entrypoint is not None and Path(entrypoint[0]).name == bin_name,
          f"ENTRYPOINT (exec form) runs the crate's binary `{bin_name}`: {entrypoint}")
    binary_path = entrypoint[0] if entrypoint else ""
    copied = any(k == "COPY" and a.split()[-1] == binary_path for k, a in body)
    check(copied, f"the final stage copies the binary to {binary_path}")

    top = help_text(binary)
    commands = subcommands(top)
    cmd = next((exec_form(a) for k, a in reversed(body) if k == "CMD"), None)
    check(cmd is not None and cmd[0] in commands, f"CMD's sub-command `{cmd[0] if cmd else None}` is in --help")
    if cmd and cmd[0] in commands:
        sub_help = help_text(binary, cmd[0])
        for flag in (w.split("=", 1)[0] for w in cmd[1:] if w.startswith("--")):
            check(re.search(rf"(^|\s){re.escape(flag)}\b", sub_help) is not None,
                  f"CMD flag {flag} is in `{cmd[0]} --help`")

    health = next((a for k, a in reversed(body) if k == "HEALTHCHECK"), "")
    health_cmd = exec_form(health.split("CMD", 1)[1].strip()) if "CMD" in health else None
    check(health_cmd is not None and health_cmd[0] == binary_path and health_cmd[1] in commands,
          f"HEALTHCHECK runs `{' '.join(health_cmd or [])}`, a sub-command of the binary")

    default_url = re.search(r"default: (http://[^\]]+)\]", help_text(binary, "probe"))
    port = default_url.group(1).rsplit(":", 1)[1] if default_url else None
    exposed = [a.split("/")[0] for k, a in body if k == "EXPOSE"]
    check(port is not None and port in exposed, f"EXPOSE {exposed} includes the default port {port}")
    volumes = [a for k, a in body if k == "VOLUME"]
    check(volumes != [], f"the state directory is a VOLUME: {volumes}")

    if failures:
        print(f"{len(failures)} Dockerfile check(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
