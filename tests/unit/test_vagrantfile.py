"""The Vagrantfile parses (Debian's ruby; Vagrant itself is not installed here) and
provisions with the same `make setup` as a bare host."""

import subprocess
from pathlib import Path

VAGRANTFILE = Path(__file__).resolve().parents[2] / "Vagrantfile"


def test_vagrantfile_syntax():  # `make setup` installs ruby
    result = subprocess.run(["ruby", "-c", str(VAGRANTFILE)], capture_output=True, text=True)
    assert result.returncode == 0 and "Syntax OK" in result.stdout, result.stderr


def test_vagrantfile_provisions_with_make_setup():
    text = VAGRANTFILE.read_text()
    assert "make setup" in text and 'config.vm.box = "bento/ubuntu-24.04"' in text
