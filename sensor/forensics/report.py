"""A case as one self-contained HTML page (`mayfly cases report ID --html FILE`): the
timeline before and after the trigger drawn as an SVG (a lane per process, a mark per
event, the trigger a line), the process tree, the artifacts with their hashes, what is
missing, and why the case was kept (its score's parts).

Every string from the container (names, paths, arguments) is escaped: the page is
read by people investigating a hostile workload. Nothing is loaded from elsewhere.
"""

from __future__ import annotations

import html
import time

from sensor.records import Record

WIDTH, LANE, MARGIN = 960, 22, 170  # the timeline's drawing: px wide, per lane, for the lanes' names
MAX_MARKS = 10_000
COLOURS = {"exec": "#6a3d9a", "file": "#1f78b4", "network": "#e6550d", "process": "#33a02c", "other": "#8c8c8c"}
_FILE = {"open", "openat", "openat2", "creat", "unlink", "unlinkat", "rename", "renameat", "renameat2", "chmod",
         "fchmodat", "symlink", "symlinkat", "link", "linkat", "mkdir", "mkdirat", "read", "write", "close"}
_NETWORK = {"socket", "connect", "accept", "accept4", "bind", "listen", "sendto", "recvfrom", "tcp_state"}
_PROCESS = {"fork", "procexit", "clone", "clone3", "kill", "ptrace", "setuid", "setgid", "unshare", "setns"}


def category(evt_type: str) -> str:
    if evt_type in ("execve", "execveat"):
        return "exec"
    for name, types in (("file", _FILE), ("network", _NETWORK), ("process", _PROCESS)):
        if evt_type in types:
            return name
    return "other"


def render(manifest: dict, timeline: list[Record], tree: list[dict]) -> str:
    e = _text
    container, trigger = manifest.get("container") or {}, manifest.get("trigger") or {}
    trigger_ts = (manifest.get("capture") or {}).get("trigger_ts")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Mayfly case {e(manifest['id'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Case <code>{e(manifest['id'])}</code></h1>",
        "<table class='facts'>",
        f"<tr><th>container</th><td>{e(container.get('id'))} (image {e(container.get('image') or '-')}, "
        f"runtime {e(container.get('runtime') or '-')})</td></tr>",
        f"<tr><th>trigger</th><td>{e(trigger.get('rule') or 'asked for by hand')} ({e(trigger.get('priority'))})"
        "</td></tr>",
        f"<tr><th>opened</th><td>{e(_when(manifest['timings'].get('opened')))}</td></tr>",
        f"<tr><th>complete</th><td>{'yes' if manifest.get('complete') else 'no: see what is missing'}</td></tr>",
        "</table>",
        "<h2>Why it was kept</h2>", _why_kept(manifest.get("value") or {}),
        "<h2>Timeline</h2>", _timeline(timeline, trigger_ts),
        "<h2>Process tree</h2>", _tree(tree),
        "<h2>Artifacts</h2>", _artifacts(manifest.get("artifacts") or []),
        "<h2>Missing</h2>", _missing(manifest.get("missing") or []),
        f"<script>{_SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts)


def _timeline(timeline: list[Record], trigger_ts: int | None) -> str:
    if not timeline:
        return "<p id='timeline' class='empty'>The flight recorder held no events of this container.</p>"
    shown = timeline[-MAX_MARKS:]
    start, end = shown[0]["ts"], max(shown[-1]["ts"], trigger_ts or 0)
    span = max(end - start, 1)
    lanes: dict[tuple, int] = {}
    for record in shown:
        proc = record.get("proc") or {}
        lanes.setdefault((proc.get("pid"), proc.get("comm")), len(lanes))
    height = LANE * len(lanes) + 40

    def x(ts: int) -> float:
        return MARGIN + (ts - start) / span * (WIDTH - MARGIN - 10)

    out = [f"<svg id='timeline' xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{height}' "
           f"viewBox='0 0 {WIDTH} {height}' role='img' aria-label='events per process over time'>"]
    for (pid, comm), lane in lanes.items():
        y = 20 + lane * LANE
        out.append(f"<text x='4' y='{y + 4}' class='lane'>{_text(comm)} [{_text(pid)}]</text>"
                   f"<line x1='{MARGIN}' x2='{WIDTH - 10}' y1='{y}' y2='{y}' class='lane-line'/>")
    for record in shown:
        proc, evt = record.get("proc") or {}, record.get("evt") or {}
        kind = category(str(evt.get("type")))
        y = 20 + lanes[(proc.get("pid"), proc.get("comm"))] * LANE
        detail = ", ".join(f"{k}={v}" for k, v in evt.items() if k not in ("type",) and not isinstance(v, dict))
        offset_ms = (record["ts"] - (trigger_ts or start)) / 1e6
        out.append(f"<rect class='mark {kind}' x='{x(record['ts']) - 1.5:.1f}' y='{y - 7}' width='3' height='14' "
                   f"fill='{COLOURS[kind]}'><title>{offset_ms:+.3f} ms {_text(evt.get('type'))} {_text(detail)}"
                   "</title></rect>")
    if trigger_ts is not None:
        tx = x(trigger_ts)
        out.append(f"<line id='trigger' x1='{tx:.1f}' x2='{tx:.1f}' y1='4' y2='{height - 16}' class='trigger'/>"
                   f"<text x='{tx + 4:.1f}' y='{height - 4}' class='trigger-label'>trigger</text>")
    out.append(f"<text x='{MARGIN}' y='{height - 4}' class='axis'>{(start - (trigger_ts or start)) / 1e6:+.1f} ms"
               f"</text><text x='{WIDTH - 10}' y='{height - 4}' text-anchor='end' class='axis'>"
               f"{(end - (trigger_ts or start)) / 1e6:+.1f} ms</text></svg>")
    before = sum(1 for r in shown if trigger_ts is not None and r["ts"] <= trigger_ts)
    legend = " ".join(f"<span class='key' style='background:{c}'></span>{n}" for n, c in COLOURS.items())
    out.append(f"<p class='legend'>{len(shown)} events ({before} before the trigger, {len(shown) - before} after)"
               f"{f', the last {MAX_MARKS} of {len(timeline)}' if len(timeline) > MAX_MARKS else ''}. {legend}</p>")
    return "".join(out)


def _tree(tree: list[dict]) -> str:
    if not tree:
        return "<p id='tree' class='empty'>No process was captured.</p>"
    pids = {p["pid"] for p in tree}
    children: dict[int | None, list[dict]] = {}
    for process in tree:
        children.setdefault(process["ppid"] if process["ppid"] in pids else None, []).append(process)

    def branch(parent: int | None) -> str:
        items = "".join(
            f"<li><code>{_text(p['pid'])}</code> {_text(p.get('name'))} <span class='cmd'>"
            f"{_text(' '.join(map(str, p.get('cmdline') or [])))}</span>{branch(p['pid'])}</li>"
            for p in children.get(parent, []))
        return f"<ul>{items}</ul>" if items else ""

    return f"<div id='tree'>{branch(None)}</div>"


def _artifacts(artifacts: list[dict]) -> str:
    rows = "".join(f"<tr><td>{_text(a['kind'])}</td><td>{_text(a['name'])}</td><td class='n'>{a['size']:,}</td>"
                   f"<td><code>{_text(a['sha256'])}</code></td></tr>" for a in artifacts)
    return (f"<table id='artifacts'><tr><th>kind</th><th>name</th><th>bytes</th><th>sha256</th></tr>{rows}"
            "</table>")


def _missing(missing: list[dict]) -> str:
    if not missing:
        return "<p id='missing'>Nothing: every part was captured.</p>"
    return "<ul id='missing'>" + "".join(f"<li>{_text(m['what'])}: {_text(m['why'])}</li>" for m in missing) + "</ul>"


def _why_kept(value: dict) -> str:
    if not value:
        return "<p id='value'>No score is recorded.</p>"
    return (f"<p id='value'>Score <b>{value['score']:.4g}</b> = weight {value['weight']:g} × severity "
            f"{value['severity']:.3g} × novelty {value['novelty']:.3g} (cases alike kept before it: "
            f"{value['similar']}) × ½ per {value['half_life_s'] / 86400:g} days of age ({value['age_s'] / 86400:.2f} "
            "days). The store lets the cases of lowest score go first when it is over its budget; a locked "
            "case never goes.</p>")


def _when(epoch_s: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch_s)) if epoch_s else "-"


def _text(value) -> str:
    if isinstance(value, bytes):
        value = value.decode(errors="backslashreplace")
    return html.escape("" if value is None else str(value), quote=True)


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; text-align: left; vertical-align: top; }
#artifacts td, #artifacts th { border-bottom: 1px solid #ddd; } td.n { text-align: right; }
code { font-size: 12px; } .cmd { color: #555; font-family: monospace; }
svg text { font: 11px monospace; fill: #333; } .lane-line { stroke: #eee; }
.trigger { stroke: #d62728; stroke-width: 2; } .trigger-label { fill: #d62728; }
.key { display: inline-block; width: 10px; height: 10px; margin: 0 3px 0 10px; }
"""

# Marks what the browser laid out, for whoever checks the page (tests/e2e/test_case_report.py).
_SCRIPT = """
window.addEventListener('load', function () {
  var svg = document.getElementById('timeline'), box = svg && svg.getBoundingClientRect ? svg.getBoundingClientRect()
      : {width: 0, height: 0};
  document.body.setAttribute('data-rendered', JSON.stringify({
    width: Math.round(box.width), height: Math.round(box.height),
    marks: document.querySelectorAll('#timeline .mark').length,
    trigger: !!document.getElementById('trigger'),
    processes: document.querySelectorAll('#tree li').length,
    artifacts: document.querySelectorAll('#artifacts tr').length - 1}));
});
"""

