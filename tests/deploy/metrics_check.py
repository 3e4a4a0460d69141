#!/usr/bin/env python3
"""Checks the Prometheus alerts and the Grafana dashboard in deploy/ against what the
broker really exposes, since a query on a misspelt metric or label returns nothing and
fails silently:

- every `token_broker_...` name in an alert or panel expression, a variable query, an
  annotation or a panel description exists in a scrape of /metrics (a histogram is
  queried as `_bucket`/`_sum`/`_count`, a counter as `_total`, as exposed; prose may
  also name the family itself);
- every label matched in a selector on such a metric is one the metric has (or a
  label Prometheus adds at scrape time: instance, job);
- the structure: every alert has expr, for, labels.severity, annotations.summary and
  description, and an alert on a per-credential metric names the credential; the
  dashboard has a `datasource` variable of type prometheus and a `credential` variable,
  and every panel (rows aside) has targets, each with an expr and that data source.

    python3 tests/deploy/metrics_check.py SCRAPE_FILE [--alerts FILE] [--dashboard FILE]
        [--emit-rules FILE]

SCRAPE_FILE is the body of GET /metrics (`curl -s http://BROKER/metrics > FILE`).
--emit-rules writes the dashboard's expressions, Grafana's variables replaced, as a
Prometheus rule file of recording rules, so that `promtool check rules FILE` parses
them too. Needs PyYAML. Exits 1 on any problem.
"""

import argparse
import json
import re
import sys
from pathlib import Path

try:
    import yaml
except ImportError:
    sys.exit("metrics_check.py needs PyYAML: run it with target/deploy-tools/venv/bin/python "
             "(made by tests/deploy/check.sh) or pip install PyYAML")

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\btoken_broker_[a-z_]+\b")
# A selector on a broker metric: the name and its {matchers}.
SELECTOR = re.compile(r"\b(token_broker_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
# Labels Prometheus attaches at scrape time, absent from the exposition itself.
TARGET_LABELS = {"instance", "job"}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
SEVERITIES = {"critical", "warning", "info"}
# Grafana's built-in interval variables, and what stands in for them when checking syntax.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h",
                    "__range_s": "3600", "__range_ms": "3600000", "__interval_ms": "60000"}

problems = []
checks = 0


def check(ok, what):
    global checks
    checks += 1
    if not ok:
        problems.append(what)
        print(f"  FAIL {what}")
    return ok


def parse_exposition(text):
    """Sample names with the label names seen on each, and family names from # TYPE."""
    samples, families = {}, {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                families[parts[2]] = parts[3]
            continue
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*?)\})?\s", line)
        if not match:
            continue
        labels = samples.setdefault(match.group(1), {})
        for label, _, value in MATCHER.findall(match.group(3) or ""):
            labels.setdefault(label, set()).add(value)
    return samples, families


def check_names(where, text, samples, families, prose=False):
    """Every broker metric name in text exists; in prose a family name will do too."""
    for name in sorted(set(NAME.findall(text))):
        if name in samples:
            check(True, f"{where}: {name}")
            continue
        hint = ""
        kind = families.get(name)
        if kind == "histogram":
            hint = " (a histogram: query _bucket, _sum or _count)"
        elif kind == "counter":
            hint = " (a counter: exposed as _total)"
        check(prose and kind is not None, f"{where}: {name} is not exposed{'' if prose else hint}")


def check_selectors(where, expr, samples):
    """Label names matched on a broker metric exist on it; unseen values are only noted."""
    for name, body in SELECTOR.findall(expr):
        if name not in samples:
            continue  # reported by check_names
        for label, op, value in MATCHER.findall(body):
            if label in TARGET_LABELS:
                continue
            known = samples[name].get(label)
            if not check(known is not None, f"{where}: {name} has no label {label!r}"):
                continue
            if op == "=" and "$" not in value and value not in known:
                # Outcomes, triggers and results appear only once they happened.
                print(f"  note {where}: {name}{{{label}={value!r}}} not in this scrape "
                      f"(seen: {', '.join(sorted(known))})")


def expr_labels(expr, samples):
    """Every label the broker metrics of an expression carry, plus the target labels."""
    labels = set(TARGET_LABELS)
    for name in NAME.findall(expr):
        labels |= set(samples.get(name, {}))
    return labels


def check_alerts(path, samples, families):
    print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:")
    doc = yaml.safe_load(path.read_text())
    if not check(isinstance(doc, dict) and isinstance(doc.get("groups"), list) and doc["groups"],
                 "alerts: a non-empty list under 'groups'"):
        return
    seen = set()
    for group in doc["groups"]:
        gname = group.get("name") if isinstance(group, dict) else None
        check(isinstance(gname, str) and gname, "alerts: every group has a name")
        rules = group.get("rules") if isinstance(group, dict) else None
        if not check(isinstance(rules, list) and rules, f"alerts: group {gname} has rules"):
            continue
        for rule in rules:
            name = rule.get("alert") or rule.get("record")
            where = f"alert {name}" if "alert" in rule else f"record {name}"
            expr = rule.get("expr")
            check(isinstance(expr, str) and expr.strip(), f"{where}: has an expr")
            expr = expr if isinstance(expr, str) else ""
            check_names(where, expr, samples, families)
            check_selectors(where, expr, samples)
            if "alert" not in rule:
                continue
            check(name not in seen, f"{where}: name is unique")
            seen.add(name)
            check(isinstance(rule.get("for"), str) and DURATION.match(rule["for"]),
                  f"{where}: has a 'for' duration")
            labels = rule.get("labels") or {}
            check(labels.get("severity") in SEVERITIES,
                  f"{where}: labels.severity is one of {sorted(SEVERITIES)}")
            notes = rule.get("annotations") or {}
            for key in ("summary", "description"):
                check(isinstance(notes.get(key), str) and notes[key].strip(),
                      f"{where}: has annotations.{key}")
            text = " ".join(str(v) for v in notes.values())
            check_names(f"{where} annotations", text, samples, families, prose=True)
            carried = expr_labels(expr, samples)
            for label in sorted(set(re.findall(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)", text))):
                check(label in carried, f"{where}: annotations use $labels.{label}, "
                                        "which its expression's metrics do not carry")
            if "credential" in carried:
                check("$labels.credential" in notes.get("summary", ""),
                      f"{where}: a per-credential alert names {{{{ $labels.credential }}}} in its summary")


def all_panels(panels):
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels") or [])


def grafana_to_promql(expr, variables):
    """The expression with Grafana's variables replaced by values PromQL parses."""
    def value(name):
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        return ".*" if name in variables else None

    def sub(match):
        name = match.group(1) or match.group(2) or match.group(3)
        replaced = value(name)
        if replaced is None:
            check(False, f"dashboard: expression uses undefined variable ${name}")
            return match.group(0)
        return replaced

    return re.sub(r"\$\{([a-zA-Z_][a-zA-Z0-9_]*)(?::[a-z]+)?\}|\[\[([a-zA-Z_]\w*)\]\]|\$([a-zA-Z_]\w*)",
                  sub, expr)


def check_dashboard(path, samples, families):
    print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:")
    dash = json.loads(path.read_text())
    check(isinstance(dash.get("schemaVersion"), int) and dash["schemaVersion"] >= 36,
          "dashboard: schemaVersion is set (36 or later)")
    check(isinstance(dash.get("uid"), str) and dash["uid"], "dashboard: has a uid")
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list", [])}
    ds = variables.get("datasource", {})
    check(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
          "dashboard: a 'datasource' variable of type datasource, query prometheus")
    cred = variables.get("credential", {})
    cred_query = cred.get("query")
    cred_query = cred_query.get("query") if isinstance(cred_query, dict) else cred_query
    check(cred.get("type") == "query" and isinstance(cred_query, str)
          and re.search(r"label_values\(\s*token_broker_credential_state\b.*,\s*credential\s*\)", cred_query),
          "dashboard: a 'credential' variable from label_values(token_broker_credential_state, credential)")
    for name, var in variables.items():
        if var.get("type") != "query":
            continue
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        check(var.get("datasource", {}).get("uid") == "${datasource}",
              f"dashboard variable {name}: uses the ${{datasource}} variable")
        check_names(f"dashboard variable {name}", str(query), samples, families)
        check_selectors(f"dashboard variable {name}", str(query), samples)

    rules, ids = [], set()
    for panel in all_panels(dash.get("panels") or []):
        title = panel.get("title", "?")
        if panel.get("type") == "row":
            continue
        where = f"panel {title!r}"
        check(panel.get("id") not in ids, f"{where}: id {panel.get('id')} is unique")
        ids.add(panel.get("id"))
        check(isinstance(panel.get("gridPos"), dict), f"{where}: has a gridPos")
        check_names(f"{where} description", panel.get("description", ""), samples, families, prose=True)
        targets = panel.get("targets") or []
        if not check(targets, f"{where}: has targets"):
            continue
        for target in targets:
            ref = target.get("refId", "?")
            expr = target.get("expr")
            if not check(isinstance(expr, str) and expr.strip(), f"{where} {ref}: has an expr"):
                continue
            for holder, whose in ((panel, "panel"), (target, "target")):
                if "datasource" in holder:
                    check(holder["datasource"].get("uid") == "${datasource}",
                          f"{where} {ref}: the {whose}'s data source is the ${{datasource}} variable")
            check(NAME.search(expr), f"{where} {ref}: queries a token_broker_ metric")
            check_names(f"{where} {ref}", expr, samples, families)
            check_selectors(f"{where} {ref}", expr, samples)
            rules.append({"record": f"dashboard:panel_{panel.get('id')}:{ref}",
                          "expr": grafana_to_promql(expr, variables)})
    check(rules, "dashboard: has panels with queries")
    return rules


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scrape", type=Path, help="a saved body of the broker's GET /metrics")
    parser.add_argument("--alerts", type=Path, default=ROOT / "deploy/prometheus/alerts.yaml")
    parser.add_argument("--dashboard", type=Path, default=ROOT / "deploy/grafana/token-broker.json")
    parser.add_argument("--emit-rules", type=Path, metavar="FILE",
                        help="write the dashboard's expressions as recording rules for promtool")
    args = parser.parse_args()

    samples, families = parse_exposition(args.scrape.read_text())
    check(any(n.startswith("token_broker_") for n in samples),
          f"{args.scrape}: holds token_broker_ samples")
    print(f"scrape: {len(families)} families, {len(samples)} sample names")
    check_alerts(args.alerts, samples, families)
    rules = check_dashboard(args.dashboard, samples, families)
    if args.emit_rules:
        doc = {"groups": [{"name": "dashboard-expressions", "rules": rules}]}
        args.emit_rules.write_text(yaml.safe_dump(doc, sort_keys=False, width=1000))
        print(f"wrote {len(rules)} dashboard expressions to {args.emit_rules}")
    print(f"metrics_check: {checks} checks, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
