"""Header tree resolution: running kernel, then BCC_KERNEL_SOURCE, then the newest distro tree."""

import os

import pytest

from sensor.system import kernel_headers

RUNNING = "6.18.44-test"


def make_tree(modules, release, uts=None, source=True):
    """A /lib/modules/<release> with build (and source) pointing at a header tree elsewhere."""
    tree = modules.parent / "usr-src" / f"linux-headers-{release}"
    (tree / "include" / "generated").mkdir(parents=True)
    (tree / "include" / "generated" / "utsrelease.h").write_text(f'#define UTS_RELEASE "{uts or release}"\n')
    common = modules.parent / "usr-src" / f"linux-headers-{release}-common"
    common.mkdir()
    (modules / release).mkdir(parents=True)
    os.symlink(tree, modules / release / "build")
    if source:
        os.symlink(common, modules / release / "source")
    return tree, common


def test_running_kernel_tree_comes_first(tmp_path):
    modules = tmp_path / "modules"
    tree, _ = make_tree(modules, RUNNING)
    make_tree(modules, "6.1.0-56-amd64")
    found = kernel_headers.resolve(RUNNING, str(modules), environ={"BCC_KERNEL_SOURCE": str(tmp_path)})
    assert (found.origin, found.version) == ("running kernel", RUNNING)


def test_bcc_kernel_source_comes_second(tmp_path):
    modules = tmp_path / "modules"
    make_tree(modules, "6.1.0-56-amd64")
    found = kernel_headers.resolve(RUNNING, str(modules), environ={"BCC_KERNEL_SOURCE": str(tmp_path)})
    assert (found.origin, found.path) == ("BCC_KERNEL_SOURCE", str(tmp_path))
    with pytest.raises(kernel_headers.HeadersMissing, match="BCC_KERNEL_SOURCE=/nonexistent"):
        kernel_headers.resolve(RUNNING, str(modules), environ={"BCC_KERNEL_SOURCE": "/nonexistent"})


def test_fallback_links_the_newest_tree_and_warns(tmp_path, caplog):
    modules = tmp_path / "modules"
    make_tree(modules, "5.10.0-30-amd64")
    newest, common = make_tree(modules, "6.1.0-56-amd64")
    make_tree(modules, "6.1.0-9-amd64")
    found = kernel_headers.resolve(RUNNING, str(modules), environ={})
    assert (found.origin, found.version, found.path) == ("fallback", "6.1.0-56-amd64", str(newest))
    assert os.readlink(modules / RUNNING / "build") == str(newest)
    assert os.readlink(modules / RUNNING / "source") == str(common)
    warning = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warning and RUNNING in str(warning[0].msg) and "6.1.0-56-amd64" in str(warning[0].msg)
    # Now linked: the next resolution finds it as the running kernel's.
    assert kernel_headers.resolve(RUNNING, str(modules), environ={}).origin == "running kernel"


def test_fallback_without_link_changes_nothing(tmp_path):
    modules = tmp_path / "modules"
    make_tree(modules, "6.1.0-56-amd64")
    assert kernel_headers.resolve(RUNNING, str(modules), environ={}, link=False).origin == "fallback"
    assert not (modules / RUNNING).exists()


def test_a_dangling_link_from_an_uninstalled_tree_is_replaced(tmp_path):
    modules = tmp_path / "modules"
    newest, _ = make_tree(modules, "6.1.0-56-amd64")
    (modules / RUNNING).mkdir()
    os.symlink(tmp_path / "gone", modules / RUNNING / "build")
    kernel_headers.resolve(RUNNING, str(modules), environ={})
    assert os.readlink(modules / RUNNING / "build") == str(newest)


def test_nothing_installed_names_the_package(tmp_path, monkeypatch):
    from sensor.system import distro
    monkeypatch.setattr(distro, "detect", lambda: distro.Distro("debian", "debian"))
    with pytest.raises(kernel_headers.HeadersMissing, match=f"install linux-headers-{RUNNING} or linux-headers-"):
        kernel_headers.resolve(RUNNING, str(tmp_path / "empty"), environ={})
