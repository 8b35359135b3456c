"""The container rig itself: real runc containers over overlayfs, always cleaned up."""

import json
import os
import subprocess

import pytest

from sensor.system import host
from sensor.testing.containers import ContainerRig, RigError, wait_until


def runc_ids():
    return set(subprocess.run(["runc", "list", "-q"], capture_output=True, text=True).stdout.split())


def test_processes_have_their_own_names_and_exit_codes_come_back(rig):
    result = rig.run(["/bin/sh", "-c", "/bin/cat /proc/self/comm; exit 7"])
    assert (result.exit_code, result.stdout) == (7, "cat\n")


def test_each_container_writes_to_its_own_upper_dir(rig):
    first = rig.create(["/bin/sh", "-c", "echo secret > /tmp/mine; sleep 30"])
    try:
        first.start()
        upper_file = os.path.join(first.upper, "tmp", "mine")
        wait_until(lambda: os.path.exists(upper_file) and open(upper_file).read() == "secret\n")
        assert rig.run(["/bin/ls", "/tmp"]).stdout == ""
        assert not os.path.exists(os.path.join(rig.image, "tmp", "mine"))
    finally:
        first.delete()


def test_cgroup_id_is_the_inode_of_the_cgroup2_directory(rig):
    container = rig.create(["/bin/true"])
    try:
        assert os.path.dirname(container.cgroup_dir) == host.cgroup2_root()
        assert os.path.basename(container.cgroup_dir) == container.id
        assert container.cgroup_id == os.stat(container.cgroup_dir).st_ino
        container.start()
        assert container.wait() == 0
    finally:
        container.delete()
    assert not os.path.exists(container.cgroup_dir)


def test_a_failing_test_still_deletes_its_containers():
    with pytest.raises(ZeroDivisionError), ContainerRig() as own_rig:
        container = own_rig.create(["/bin/sleep", "60"]).start()
        assert container.id in runc_ids()
        1 / 0
    assert container.id not in runc_ids()
    assert not os.path.ismount(container.rootfs) and not os.path.exists(container.dir)


def test_static_helpers_annotations_and_host_network(rig):
    helper = rig.compile_static("ppid", '#include <stdio.h>\n#include <unistd.h>\n'
                                        'int main(void) { printf("%d\\n", getppid()); return 0; }\n')
    container = rig.create(["/usr/local/bin/ppid"], files={"/usr/local/bin/ppid": helper},
                           annotations={"io.mayfly.test": "yes"}, host_network=True)
    try:
        with open(os.path.join(container.bundle, "config.json")) as f:
            config = json.load(f)
        assert config["annotations"] == {"io.mayfly.test": "yes"}
        assert "network" not in {n["type"] for n in config["linux"]["namespaces"]}
        container.start()
        assert container.wait() == 0
        assert container.output()[0] == "0\n"  # pid 1 of its own pid namespace has no parent there
    finally:
        container.delete()


def test_wait_times_out_clearly(rig):
    container = rig.create(["/bin/sleep", "60"]).start()
    try:
        with pytest.raises(RigError, match="still running"):
            container.wait(timeout=0.2)
    finally:
        container.delete()
    assert container.exit_code == -9
