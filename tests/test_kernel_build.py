"""Building the fast path's kernels: a machine whose compiler fails pays for the attempt once."""
import os
import stat

from chat.runtime import kernels


def _fake_compiler(path, log):
    """A `c++` that answers --version, records every build it is asked for, and fails them."""
    path.write_text(f"#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'fake c++ 1.0'; exit 0; fi\n"
                    f"echo build >> {log}\necho 'fatal error: no such header' >&2\nexit 1\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_a_failed_build_is_remembered_and_not_retried(tmp_path, monkeypatch, capsys):
    log = tmp_path / "builds.log"
    monkeypatch.setenv("CXX", str(_fake_compiler(tmp_path / "c++", log)))
    monkeypatch.setenv("STEERCHAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STEERCHAT_KERNELS", raising=False)
    kernels.ops.cache_clear()
    try:
        assert kernels.ops() is None  # torch's own calls, not an error
        said = capsys.readouterr().err
        assert "no such header" in said and "STEERCHAT_KERNELS=rebuild" in said  # why, and how to retry
        assert log.read_text().count("build") == 1
        failed = kernels.failure_file(kernels.library_path(os.environ["CXX"]))
        assert failed.exists()

        kernels.ops.cache_clear()  # a later start
        assert kernels.ops() is None
        assert log.read_text().count("build") == 1  # not built again
        assert capsys.readouterr().err == ""  # and not said again

        kernels.ops.cache_clear()
        monkeypatch.setenv("STEERCHAT_KERNELS", "rebuild")
        assert kernels.ops() is None
        assert log.read_text().count("build") == 2  # asked for: tried again
    finally:
        kernels.ops.cache_clear()


def test_the_key_covers_the_compiler_version(tmp_path, monkeypatch):
    a = tmp_path / "c++"
    a.write_text("#!/bin/sh\necho 'c++ 1.0'\n")
    a.chmod(a.stat().st_mode | stat.S_IEXEC)
    kernels._compiler_version.cache_clear()
    first = kernels.library_path(str(a))
    a.write_text("#!/bin/sh\necho 'c++ 9.9'\n")  # the same path, upgraded: another library
    kernels._compiler_version.cache_clear()
    assert kernels.library_path(str(a)) != first
    kernels._compiler_version.cache_clear()
