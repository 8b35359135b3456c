"""`pip install .` (not only -e) ships ebpf/ and rules/ and finds them where installed;
`import sensor` needs no BCC, and starting without BCC names the package to install."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def layout_structs():
    from sensor.kernel import layout
    return layout.events().structs


def test_non_editable_install_finds_its_data(tmp_path):
    source, target = tmp_path / "src", tmp_path / "site"
    # Build from a copy: the build writes into its source tree, which may not be ours to write.
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, cwd=tmp_path)
    assert (target / "sensor" / "ebpf" / "events.h").is_file()
    assert (target / "sensor" / "ebpf" / "mayfly.bpf.c").is_file()
    assert (target / "sensor" / "rules" / "mayfly_rules.yaml").is_file()
    probe = ("from sensor import ProgramConfig, resources\n"
             "from sensor.kernel import bpf_program, layout\n"
             "print(resources.ebpf_file('events.h'))\n"
             "print(resources.builtin_rule_files()[0])\n"
             "print(len(layout.events().structs))\n"
             "print('// ---- ' in bpf_program.render(ProgramConfig()))\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(target / "sensor" / "ebpf" / "events.h"), str(target / "sensor" / "rules" / "mayfly_rules.yaml"),
                   str(len(layout_structs())), "True"]


def test_import_without_bcc_and_a_clear_error_at_start(tmp_path):
    probe = ("import sys\n"
             "sys.modules['bcc'] = None  # as on a host without python3-bpfcc\n"
             "import sensor\n"
             "from sensor.system import distro\n"
             "try:\n"
             "    sensor.Sensor(rules=[]).start()\n"
             "except sensor.BccMissing as e:\n"
             "    print(distro.detect().bcc_package in str(e), \"'bcc' is unrelated\" in str(e))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.split() == ["True", "True"], result.stderr


def test_no_pypi_bcc_dependency():
    from importlib.metadata import requires

    from packaging.requirements import Requirement
    names = {Requirement(r).name.lower() for r in requires("mayfly")}
    assert {"numba", "msgpack", "structlog", "pyroute2"} <= names
    assert "bcc" not in names  # the PyPI project of that name is an unrelated library


def test_without_privileges_the_error_says_so(tmp_path):
    # Mocked: the check reads the capabilities in /proc/self/status, and this suite
    # runs as root, so the probe makes it see none.
    probe = ("import sensor, sensor.system.host as h\n"
             "h.effective_capabilities = lambda status='': set()\n"
             "try:\n"
             "    sensor.Sensor(rules=[]).start()\n"
             "except h.HostError as e:\n"
             "    print('needs root' in str(e) and 'CAP_BPF' in str(e))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.split() == ["True"], result.stderr
