"""events.h is the single source of truth: the dtypes derived from it match the C compiler."""

import subprocess

import numpy as np
import pytest

from sensor import resources
from sensor.kernel import layout


def compiler_layout(tmp_path, events):
    """sizeof/offsetof of every struct and field, as gcc lays out events.h."""
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include <linux/types.h>', '#include "events.h"',
             "int main(void) {"]
    for name, dtype in events.structs.items():
        lines.append(f'printf("{name} %zu\\n", sizeof(struct {name}));')
        for field in dtype.names:
            lines.append(f'printf("{name}.{field} %zu %zu\\n", offsetof(struct {name}, {field}), '
                         f'sizeof(((struct {name} *)0)->{field}));')
    lines.append("return 0; }")
    source = tmp_path / "layout.c"
    source.write_text("\n".join(lines))
    binary = tmp_path / "layout"
    subprocess.run(["gcc", f"-I{resources.ebpf_dir()}", "-o", str(binary), str(source)], check=True)
    return subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout.splitlines()


def test_dtypes_match_the_compiler(tmp_path):
    events = layout.events()
    expected = []
    for name, dtype in events.structs.items():
        expected.append(f"{name} {dtype.itemsize}")
        for field in dtype.names:
            field_dtype, offset = dtype.fields[field][:2]
            expected.append(f"{name}.{field} {offset} {field_dtype.itemsize}")
    assert compiler_layout(tmp_path, events) == expected


def test_constants_and_kinds():
    events = layout.events()
    c = events.constants
    assert events.kinds() == {c["MAYFLY_EVENT_SYSCALL"]: "syscall", c["MAYFLY_EVENT_FORK"]: "fork",
                              c["MAYFLY_EVENT_EXIT"]: "exit", c["MAYFLY_EVENT_CGROUP"]: "cgroup",
                              c["MAYFLY_EVENT_TCP"]: "tcp"}
    assert max(events.kinds()) < c["MAYFLY_KINDS_MAX"]
    # Constants the parser cannot derive (it reads integers only) are checked here.
    assert c["MAYFLY_DATA_LEN"] == c["MAYFLY_STR_SLOTS"] * c["MAYFLY_STR_LEN"]
    assert c["MAYFLY_RING_LOST_SLOTS"] == c["MAYFLY_KINDS_MAX"] + c["MAYFLY_MAX_SYSCALLS"]
    header = events.structs["mayfly_event_header"]
    for name in events.kinds().values():
        assert events.structs[f"mayfly_{name}_event"].fields["hdr"] == (header, 0)
    assert header.itemsize % 8 == 0


def test_schema_version_is_the_one_user_space_decodes():
    from sensor.kernel import bpf_program
    assert layout.events().constants["MAYFLY_SCHEMA_VERSION"] == bpf_program.EXPECTED_SCHEMA


@pytest.mark.parametrize("body, reason", [
    ("__u32 a; __u64 b;", "implicit padding before b"),
    ("__u64 a; __u32 b;", "implicit tail padding"),
    ("int a;", "type int"),
    ("char name[UNDEFINED_LEN];", "UNDEFINED_LEN"),
    ("struct nowhere x;", "not defined"),
    ("char c;", "lone char"),
])
def test_refuses_what_it_cannot_vouch_for(body, reason):
    with pytest.raises(layout.LayoutError, match=reason):
        layout.parse(f"struct bad {{ {body} }};")


def test_nested_struct_alignment_is_the_c_one():
    parsed = layout.parse("#define N 3\nstruct in { __u64 a; };\nstruct out { __u32 x; __u32 _pad; struct in i; "
                          "char s[N]; __u8 t[5]; };")
    out = parsed.structs["out"]
    assert [out.fields[f][1] for f in out.names] == [0, 4, 8, 16, 19]
    assert out.itemsize == 24
    assert parsed.structs["in"] == np.dtype({"names": ["a"], "formats": ["<u8"], "offsets": [0], "itemsize": 8})


def test_truncate_keeps_whole_fields_and_cuts_the_last_array():
    full = layout.events().structs["mayfly_syscall_event"]
    data_at = full.fields["data"][1]
    assert layout.truncate(full, full.itemsize) == full
    assert layout.truncate(full, data_at).names == tuple(n for n in full.names if n != "data")
    cut = layout.truncate(full, data_at + 256)
    assert cut.fields["data"][0].shape == (256,) and cut.itemsize == data_at + 256
