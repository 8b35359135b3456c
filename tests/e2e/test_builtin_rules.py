"""Every built-in rule fires from a real runc container doing what it describes, and a
benign neighbour, doing something close to it, raises none of it. One `mayfly run` with
the built-in rules (container rules only: the host's cgroups are filtered in the kernel)."""

from scenarios import ATTACK, run_scenarios

from sensor.detect import rule_loader
from sensor.resources import builtin_rule_files


def sh(script, **options):
    return {"args": ["/bin/sh", "-c", script], **options}


def attack(*args, **options):
    return {"args": [ATTACK, *args], "attack": True, **options}


TRUE = {"args": ["/bin/true"]}
# rule -> (what fires it, a benign neighbour), in the scenario format of
# scenarios.run_scenarios.
CASES = {
    "Shell Spawned in Container": (sh("true"), TRUE),
    "Drop, Make Executable and Run in Container": (
        sh("cp /bin/busybox /tmp/tool && chmod +x /tmp/tool && /tmp/tool true"),
        sh("cp /bin/busybox /tmp/tool && chmod +x /tmp/tool")),
    "Network Scan from Container": (attack("scan", "198.51.100", "25", "80", host_network=True),
                                    attack("scan", "198.51.100", "5", "80", host_network=True)),
    "Sensitive File Read in Container": ({"args": ["/bin/cat", "/etc/shadow"], "files": {"/etc/shadow": "secret"}},
                                         {"args": ["/bin/cat", "/etc/passwd"]}),
    "Private Key Read in Container": ({"args": ["/bin/cat", "/root/.ssh/id_rsa"], "files": {"/root/.ssh/id_rsa": "secret"}},
                                      {"args": ["/bin/cat", "/root/.ssh/known_hosts"],
                                       "files": {"/root/.ssh/known_hosts": "secret"}}),
    "Cloud Credentials Read in Container": (
        {"args": ["/bin/cat", "/root/.aws/credentials"], "files": {"/root/.aws/credentials": "secret"}},
        {"args": ["/bin/cat", "/root/.aws/notes"], "files": {"/root/.aws/notes": "secret"}}),
    "Service Account Token Read in Container": (
        {"args": ["/bin/cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"],
         "files": {"/var/run/secrets/kubernetes.io/serviceaccount/token": "secret"}},
        {"args": ["/bin/cat", "/var/run/secrets/other/token"], "files": {"/var/run/secrets/other/token": "secret"}}),
    "Write Below Binary Directory in Container": (sh("echo x > /usr/bin/evil"), sh("echo x > /tmp/fine")),
    "Write Below Etc in Container": (sh("echo x > /etc/motd"), sh("cat /etc/passwd > /tmp/copy")),
    "Persistence Through Cron or SSH Keys in Container": (sh("mkdir -p /root/.ssh && echo key > /root/.ssh/authorized_keys"),
                                                          sh("mkdir -p /root/.ssh && echo key > /root/.ssh/notes")),
    "Log Files Cleared in Container": (sh("mkdir -p /var/log && : > /var/log/app.log"),
                                       sh("mkdir -p /var/log && echo line >> /var/log/app.log")),
    "Shell History Deleted in Container": (sh("touch /root/.ash_history && rm /root/.ash_history"),
                                           sh("touch /root/.profile && rm /root/.profile")),
    "Symlink Over Sensitive File in Container": ({"args": ["/bin/ln", "-s", "/etc/shadow", "/tmp/s"]},
                                                 {"args": ["/bin/ln", "-s", "/etc/hostname", "/tmp/s"]}),
    "Hardlink Over Sensitive File in Container": ({"args": ["/bin/ln", "/etc/shadow", "/tmp/h"],
                                                   "files": {"/etc/shadow": "secret"}},
                                                  {"args": ["/bin/ln", "/etc/passwd", "/tmp/h"]}),
    "Setuid Bit Set in Container": (sh("touch /tmp/x && chmod 4755 /tmp/x"), sh("touch /tmp/x && chmod 755 /tmp/x")),
    "Package Manager Run in Container": ({"args": ["/bin/rpm", "-q", "x"]}, TRUE),
    "Terminal Shell in Container": (attack("tty", "/bin/sh", "-c", "sleep 0.5"), sh("sleep 0.5")),
    "Download Tool Run in Container": (sh("ln -s /bin/busybox /tmp/wget; /tmp/wget -q -O /dev/null http://127.0.0.1:9/"),
                                       sh("ln -s /bin/busybox /tmp/ls; /tmp/ls /")),
    "Netcat or Socat Run in Container": (sh("ln -s /bin/busybox /tmp/nc; /tmp/nc 127.0.0.1 9"),
                                         sh("ln -s /bin/busybox /tmp/cat; /tmp/cat /etc/passwd")),
    "Execution From Memory or Shared Memory in Container": (
        attack("spawn", ATTACK, "memfd_exec", "/bin/busybox", "sleep", "0.5"), attack("spawn", "/bin/sleep", "0.5")),
    "Ptrace Attach in Container": (attack("ptrace_attach"), attack("ptrace_traceme")),
    "Setuid to Root by Non-Root in Container": (attack("setuid0", uid=1000), attack("setuid0")),
    "Kernel Module Load from Container": (attack("init_module"), attack("socket")),
    "Mount in Container": (sh("mount -t tmpfs none /mnt", capabilities=["CAP_SYS_ADMIN"]),
                           sh("cat /proc/mounts > /dev/null", capabilities=["CAP_SYS_ADMIN"])),
    "Namespace Change in Container": (attack("unshare", capabilities=["CAP_SYS_ADMIN"]), attack("socket")),
    "Release Agent or Core Pattern Written in Container": (sh("echo /x > /tmp/release_agent"),
                                                           sh("echo /x > /tmp/release_notes")),
    "BPF Syscall in Container": (attack("bpf"), attack("socket")),
    "Stdio Redirected to Network in Container": (attack("redirect", "port", host_network=True),
                                                 sh("echo hi | cat")),
    "Connection to Mining Pool Port from Container": (attack("connect", "198.51.100.9", "3333", host_network=True),
                                                      attack("connect", "198.51.100.9", "443", host_network=True)),
    "Packet Socket in Container": (attack("packet_socket"), attack("socket")),
}


def test_the_cases_cover_every_builtin_rule():
    assert set(CASES) == {r.name for r in rule_loader.load(builtin_rule_files()).rules}


def test_every_builtin_rule_fires_and_its_benign_neighbour_does_not(rig, tmp_path):
    scenarios = {(rule, role): case for rule, cases in CASES.items() for role, case in zip(("attack", "benign"), cases)}
    fired = run_scenarios(rig, tmp_path, [], scenarios)
    wrong = {key: sorted(names) for key, names in fired.items() if (key[0] in names) != (key[1] == "attack")}
    assert wrong == {}, wrong
