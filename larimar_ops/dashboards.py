"""Grafana dashboards for Larimar (platform/grafana/dashboards/*.json) and their provisioning.

    python -m larimar_ops.dashboards --grafana-url http://grafana:3000 --token $GRAFANA_TOKEN \\
        --prometheus-url http://prometheus:9090          # datasource + folder + dashboards
    python -m larimar_ops.dashboards --check                 # validate the JSON only, no Grafana

Provisioning goes through Grafana's HTTP API with `grafana-client`: a Prometheus datasource
(fixed uid, created or updated), a "Larimar" folder, and every dashboard (overwritten, so the
command is idempotent). The dashboards pick their datasource through a `datasource` variable:
they work with any Prometheus datasource; provisioning makes ours the default choice.

Every PromQL expression in the dashboards is run against a real Prometheus scraping a real Ray
(training job + Serve application) by tests/test_metrics.py; `expressions` and `to_promql` are
what that test uses to read them the way Grafana would.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "platform" / "grafana" / "dashboards"
DATASOURCE_UID = "larimar-prometheus"
DATASOURCE_NAME = "Larimar Prometheus"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
FOLDER_UID = "larimar"
PANEL_TYPES = {"timeseries", "stat", "gauge", "bargauge", "table", "text", "row"}


class DashboardError(ValueError):
    pass


def load(directory: Path = DASHBOARDS) -> dict[str, dict]:
    """{file name: dashboard JSON} for every *.json in `directory`."""
    boards = {}
    for path in sorted(Path(directory).glob("*.json")):
        try:
            boards[path.name] = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DashboardError(f"{path}: {err}") from None
    if not boards:
        raise DashboardError(f"no dashboards (*.json) in {directory}")
    return boards


def problems(board: dict) -> list[str]:
    """What Grafana would reject or render wrongly: missing uid/title, duplicate panel ids,
    panels or targets not bound to the `datasource` variable, targets without an expression,
    panels outside the 24-column grid, variables used but not defined."""
    out = []
    for key in ("uid", "title", "panels", "templating", "schemaVersion"):
        if key not in board:
            out.append(f"missing `{key}`")
    variables = {v.get("name") for v in board.get("templating", {}).get("list", [])}
    ds_vars = [v for v in board.get("templating", {}).get("list", []) if v.get("type") == "datasource"]
    if [v.get("name") for v in ds_vars] != ["datasource"] or ds_vars[0].get("query") != "prometheus":
        out.append("templating needs exactly one datasource variable `datasource` of type prometheus")
    for v in board.get("templating", {}).get("list", []):
        if v.get("type") == "query" and v.get("datasource") != DATASOURCE_REF:
            out.append(f"variable {v.get('name')}: datasource must be {DATASOURCE_REF}")
    ids = [p.get("id") for p in board.get("panels", [])]
    dupes = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if dupes or None in ids:
        out.append(f"panel ids must be unique and set: duplicates {dupes}")
    for p in board.get("panels", []):
        where = f"panel {p.get('id')} ({p.get('title')!r})"
        if p.get("type") not in PANEL_TYPES:
            out.append(f"{where}: unknown type {p.get('type')!r}")
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "xywh") or g["x"] < 0 or g["x"] + g["w"] > 24:
            out.append(f"{where}: gridPos must be integers x, y, w, h within 24 columns")
        if p.get("type") == "row":
            continue
        if p.get("datasource") != DATASOURCE_REF:
            out.append(f"{where}: datasource must be {DATASOURCE_REF}")
        if not p.get("targets"):
            out.append(f"{where}: no targets")
        refs = [t.get("refId") for t in p.get("targets", [])]
        if len(set(refs)) != len(refs):
            out.append(f"{where}: duplicate refIds {refs}")
        for t in p.get("targets", []):
            if t.get("datasource") != DATASOURCE_REF:
                out.append(f"{where} target {t.get('refId')}: datasource must be {DATASOURCE_REF}")
            if not str(t.get("expr", "")).strip():
                out.append(f"{where} target {t.get('refId')}: empty expr")
            for name in re.findall(r"\$\{?(\w+)", t.get("expr", "")):
                if not name.startswith("__") and name not in variables:
                    out.append(f"{where} target {t.get('refId')}: variable ${name} is not defined")
    return out


def expressions(board: dict) -> list[tuple[str, str]]:
    """[(where, PromQL with Grafana variables)] of every target and query variable."""
    out = []
    for p in board.get("panels", []):
        for t in p.get("targets", []):
            out.append((f"{board['uid']}/{p['id']} {p['title']} [{t['refId']}]", t["expr"]))
    return out


def variable_queries(board: dict) -> list[tuple[str, str, str]]:
    """[(variable, metric, label)] of every `label_values(metric, label)` query variable."""
    out = []
    for v in board.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", q.strip())
            if not m:
                raise DashboardError(f"{board['uid']}: variable {v['name']}: unsupported query {q!r}")
            out.append((v["name"], m.group(1), m.group(2)))
    return out


def to_promql(expr: str, rate_interval: str = "1m", range_: str = "1h", values: dict[str, str] | None = None) -> str:
    """Grafana's interpolation for our dashboards: `$__rate_interval`, `$__range`, and a
    multi-value variable as the regex Grafana sends for "All" (`.*`) unless a value is given."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__range", range_)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: (values or {}).get(m.group(1), ".*"), expr)


# -- provisioning ----------------------------------------------------------------------------


def datasource_payload(prometheus_url: str, name: str = DATASOURCE_NAME, uid: str = DATASOURCE_UID) -> dict:
    return {
        "name": name,
        "uid": uid,
        "type": "prometheus",
        "access": "proxy",
        "url": prometheus_url,
        "isDefault": False,
        "jsonData": {"httpMethod": "POST", "timeInterval": "10s"},
    }


def dashboard_payload(board: dict, folder_uid: str = FOLDER_UID, datasource_uid: str = DATASOURCE_UID) -> dict:
    """The POST /api/dashboards/db body: no numeric id (Grafana matches on uid), our datasource
    preselected in the `datasource` variable, overwrite on."""
    board = copy.deepcopy(board)
    board.pop("id", None)
    for v in board["templating"]["list"]:
        if v.get("type") == "datasource":
            v["current"] = {"selected": True, "text": DATASOURCE_NAME, "value": datasource_uid}
    return {
        "dashboard": board,
        "folderUid": folder_uid,
        "overwrite": True,
        "message": "provisioned by python -m larimar_ops.dashboards",
    }


def provision(api: Any, prometheus_url: str, boards: dict[str, dict], folder_title: str = "Larimar") -> dict:
    """Create or update the datasource, the folder and the dashboards; returns their URLs/uids."""
    from grafana_client.client import GrafanaClientError

    ds = datasource_payload(prometheus_url)
    try:
        api.datasource.get_datasource_by_uid(ds["uid"])
        api.datasource.update_datasource_by_uid(ds["uid"], ds)
    except GrafanaClientError as err:
        if err.status_code != 404:
            raise
        api.datasource.create_datasource(ds)
    try:
        api.folder.get_folder(FOLDER_UID)
    except GrafanaClientError as err:
        if err.status_code != 404:
            raise
        api.folder.create_folder(folder_title, uid=FOLDER_UID)
    urls = {}
    for name, board in boards.items():
        found = problems(board)
        if found:
            raise DashboardError(f"{name}: " + "; ".join(found))
        result = api.dashboard.update_dashboard(dashboard_payload(board))
        urls[board["uid"]] = result.get("url", "")
    return {"datasource": ds["uid"], "folder": FOLDER_UID, "dashboards": urls}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--grafana-url", default=os.environ.get("GRAFANA_URL"), help="e.g. http://grafana:3000 (env GRAFANA_URL)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("GRAFANA_TOKEN"),
        help="service-account token (env GRAFANA_TOKEN); or --user/--password",
    )
    parser.add_argument("--user", default=os.environ.get("GRAFANA_USER"))
    parser.add_argument("--password", default=os.environ.get("GRAFANA_PASSWORD"))
    parser.add_argument("--prometheus-url", help="as Grafana's server reaches it, e.g. http://prometheus:9090")
    parser.add_argument("--dashboards", type=Path, default=DASHBOARDS)
    parser.add_argument("--check", action="store_true", help="validate the dashboards only")
    opts = parser.parse_args(argv)
    try:
        boards = load(opts.dashboards)
        found = [f"{name}: {p}" for name, b in boards.items() for p in problems(b)]
        if found:
            raise DashboardError("\n".join(found))
        if opts.check:
            n = sum(len(expressions(b)) for b in boards.values())
            print(f"{len(boards)} dashboards, {n} PromQL expressions: OK")
            return 0
        if not opts.grafana_url or not opts.prometheus_url:
            parser.error("--grafana-url and --prometheus-url are required (or --check)")
        from grafana_client import GrafanaApi

        credential = opts.token or ((opts.user, opts.password) if opts.user else None)
        summary = provision(GrafanaApi.from_url(opts.grafana_url, credential=credential), opts.prometheus_url, boards)
    except DashboardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # grafana-client's HTTP errors and connection failures alike
        print(f"error: provisioning {opts.grafana_url} failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    for uid, url in summary["dashboards"].items():
        print(f"{uid}: {opts.grafana_url.rstrip('/')}{url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
