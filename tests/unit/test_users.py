"""Names of uids and gids in a process's own root, read safely from hostile roots."""

import os

from sensor.identity.users import Users, parse_ids, read_in_root


def make_root(tmp_path, passwd=b"root:x:0:0::/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/false\n",
              group=b"root:x:0:\nwww-data:x:33:\n"):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_bytes(passwd)
    (root / "etc" / "group").write_bytes(group)
    return root


def test_names_come_from_the_roots_own_files(tmp_path):
    root = make_root(tmp_path)
    users = Users(root_of=lambda pid: str(root))
    assert users.names("c1", 1, 33, 0) == ("www-data", "root")
    assert users.names("c1", 1, 1234, 1234) == (None, None)


def test_a_symlink_in_the_root_cannot_lead_out_of_it(tmp_path):
    secret = tmp_path / "host-shadow"
    secret.write_bytes(b"host:x:0:0::/:/bin/sh\n")
    root = make_root(tmp_path)
    os.remove(root / "etc" / "passwd")
    os.symlink(str(secret), root / "etc" / "passwd")  # absolute: resolved inside the root
    assert read_in_root(str(root), "etc/passwd") is None
    os.symlink("../../host-shadow", root / "etc" / "relative")  # .. stops at the root
    assert read_in_root(str(root), "etc/relative") is None


def test_only_regular_files_are_read(tmp_path):
    root = make_root(tmp_path)
    os.remove(root / "etc" / "passwd")
    os.mkfifo(root / "etc" / "passwd")  # would block a plain open
    assert read_in_root(str(root), "etc/passwd") is None
    assert read_in_root(str(tmp_path / "missing"), "etc/passwd") is None


def test_parsing_keeps_the_first_name_of_an_id_and_skips_junk():
    assert parse_ids(b"a:x:1:1\nb:x:1:1\n\nbroken\nc:x:notanumber:\n\xff:x:2:2\n") == {1: "a", 2: "\ufffd"}
