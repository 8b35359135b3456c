"""The `mayfly` command's parts that need no root: help, --print-ebpf, replay, log format."""

import json
import logging
import subprocess
import sys

from click.testing import CliRunner

from sensor import FileSink, records
from sensor.cli import main


def test_console_script_and_module_are_the_same_command():
    out = subprocess.run([sys.executable, "-m", "sensor", "--help"], capture_output=True, text=True, check=True)
    for command in ("run", "doctor", "replay", "rules"):
        assert command in out.stdout


def test_print_ebpf_shows_cflags_and_sources():
    result = CliRunner().invoke(main, ["run", "--print-ebpf", "--ringbuf-pages", "64"])
    assert result.exit_code == 0
    assert "-DMAYFLY_RINGBUF_PAGES=64" in result.output
    assert "struct mayfly_event_header {" in result.output
    assert "TRACEPOINT_PROBE(sched, sched_process_exec)" in result.output


def test_bad_options_are_refused_before_anything_loads():
    result = CliRunner().invoke(main, ["run", "--ringbuf-pages", "3"])
    assert result.exit_code == 2 and "power of two" in result.output
    result = CliRunner().invoke(main, ["run", "--output", "tcp://x"])
    assert result.exit_code == 2 and "unknown sink 'tcp://x'" in result.output


def test_replay_prints_each_record(tmp_path):
    path = tmp_path / "r.msgpack"
    sink = FileSink(str(path))
    sink.write(records.new("event", 0, container={"id": "c", "cgroup_id": 77},
                           proc={"pid": 5, "tid": 5, "ppid": 1, "uid": 0, "gid": 0, "comm": "ls"},
                           evt={"type": "execve", "res": 0, "filename": "/bin/ls"}))
    sink.write(records.new("lost", 0, count=2, reason="ring_full", types={"openat": 2}))
    sink.close()
    result = CliRunner().invoke(main, ["replay", str(path)])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) == 2 and "cgroup=77" in lines[0] and "LOST         2 ring_full" in lines[1]


def test_replay_of_a_damaged_file_names_it(tmp_path):
    path = tmp_path / "r.msgpack"
    path.write_bytes(records.pack(records.new("lost", 0, count=1, reason="x"))[:-2])
    result = CliRunner().invoke(main, ["replay", str(path)])
    assert result.exit_code == 1 and str(path) in result.output and "truncated" in result.output


def test_logs_are_json_when_not_a_tty(tmp_path):
    from sensor.log import configure_cli, get_logger
    log_file = tmp_path / "log"
    with open(log_file, "w") as stream:
        configure_cli(logging.INFO, stream)
        get_logger("test").warning("something happened", detail=3)
    (line,) = log_file.read_text().splitlines()
    entry = json.loads(line)
    assert (entry["event"], entry["detail"], entry["level"], entry["logger"]) == \
        ("something happened", 3, "warning", "mayfly.test")
    logging.getLogger("mayfly").handlers.clear()


def test_library_import_configures_nothing_globally():
    probe = ("import logging, structlog\n"
             "before = list(logging.getLogger().handlers)\n"
             "import sensor\n"
             "from sensor.log import get_logger\n"
             "get_logger('x').info('quiet')\n"
             "print(logging.getLogger().handlers == before, structlog.is_configured())\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"] and out.stderr == ""


def test_rules_check_prints_problems_then_the_summary(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("- rule: Shell\n  desc: d\n  condition: evt.type = execve and proc.name = sh\n"
                    "  output: o\n  priority: WARNING\n")
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text("- rule: Login\n  desc: d\n  condition: user.loginuid = 0\n  output: o\n  priority: INFO\n"
                     "- rule: Fine\n  desc: d\n  condition: fd.name = /etc/shadow\n  output: o\n  priority: INFO\n")
    result = CliRunner().invoke(main, ["rules", "check", str(good)])
    assert (result.exit_code, result.output) == (0, "1 rules loaded, 0 rejected\n")
    result = CliRunner().invoke(main, ["rules", "check", str(good), str(mixed)])
    assert result.exit_code == 1
    assert result.output == (f"{mixed}:3: Login: uses field Mayfly does not provide: user.loginuid\n"
                             "2 rules loaded, 1 rejected\n")
    report = tmp_path / "compat.md"
    result = CliRunner().invoke(main, ["rules", "check", "--allow-rejected", "--report", str(report), str(mixed)])
    assert result.exit_code == 0
    assert "| Login | 3 | uses field Mayfly does not provide: user.loginuid |" in report.read_text()


def test_cases_commands_list_show_export_lock_and_remove(tmp_path):
    from sensor.forensics.store import CaseStore
    store_dir = str(tmp_path / "store")
    store = CaseStore(store_dir, writer=True)
    case = store.open({"id": "c1", "image": "web:1"}, [{"kind": "alert", "rule": "r"}], "Read sensitive file",
                      "WARNING")
    case.add("file", b"/tmp/\xffodd\x1b[31m", b"payload")
    sealed = case.seal()
    runner = CliRunner()

    listed = json.loads(runner.invoke(main, ["cases", "--store", store_dir, "list", "--json"]).output)
    assert [(c["id"], c["container"]["image"], c["trigger"]["rule"], c["state"]) for c in listed] == \
        [(sealed["id"], "web:1", "Read sensitive file", "sealed")]
    assert listed[0]["bytes"] > 7 and 0 < listed[0]["score"] <= 1
    line = runner.invoke(main, ["cases", "--store", store_dir, "list"]).output
    assert sealed["id"] in line and "\x1b" not in line

    shown = json.loads(runner.invoke(main, ["cases", "--store", store_dir, "show", sealed["id"]]).output)
    assert shown["artifacts"][0]["name"] == {"$bytes": "L3RtcC//b2RkG1szMW0="}
    out = tmp_path / "out"
    assert runner.invoke(main, ["cases", "--store", store_dir, "export", sealed["id"], str(out)]).exit_code == 0
    assert [p.read_bytes() for p in (out / "file").rglob("*") if p.is_file()] == [b"payload"]

    assert runner.invoke(main, ["cases", "--store", store_dir, "lock", sealed["id"]]).exit_code == 0
    assert json.loads(runner.invoke(main, ["cases", "--store", store_dir, "list", "--json"]).output)[0]["locked"]
    assert runner.invoke(main, ["cases", "--store", store_dir, "rm", sealed["id"]]).exit_code == 0
    missing = runner.invoke(main, ["cases", "--store", store_dir, "show", sealed["id"]])
    assert missing.exit_code == 1 and f"no case '{sealed['id']}'" in missing.output
    nowhere = runner.invoke(main, ["cases", "--store", str(tmp_path / "none"), "show", "x"])
    assert nowhere.exit_code == 1 and "no case store at" in nowhere.output
