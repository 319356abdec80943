"""The fast path's single-row CPU kernels (chat/runtime/kernels.cpp), built once and loaded as torch ops.

`ops()` returns `torch.ops.steerchat` once built, or None where they cannot be (no C++
compiler, not Linux, `STEERCHAT_KERNELS=0`): the lean block then keeps torch's own calls. The
build runs the machine's `c++` with `-march=native` against the installed torch's headers
(about 15 s on 2 cores, once) and is cached beside the converted models
(`features.paths.cache_dir()/kernels/<key>.so`), the key covering the source, torch's version and
folder (the library links to it), the compiler, its version and flags, and the CPU's flags, so
another machine, compiler or torch builds its own. A failed build is remembered per key
(`<key>.failed`), so a machine without a working compiler pays for the attempt once.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch

from features.paths import cache_dir

SOURCE = Path(__file__).with_name("kernels.cpp")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


BUILD_TIMEOUT_S = 180  # a healthy build takes ~15 s on 2 cores; a hung compiler must not hang a start


def _flags(root: Path) -> list[str]:
    """The compiler flags, before the source and output names."""
    return ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fopenmp",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            f"-I{root / 'include'}", f"-I{root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}"]


@functools.lru_cache(maxsize=None)
def _compiler_version(compiler: str) -> str:
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=10).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_path(compiler: str) -> Path:
    """`<cache>/kernels/<key>.so`; the key covers everything that makes another binary."""
    root = Path(torch.__file__).parent
    key = hashlib.sha256("\n".join([SOURCE.read_text(), torch.__version__, str(root), compiler,
                                    _compiler_version(compiler), " ".join(_flags(root)), _cpu_flags(),
                                    sysconfig.get_platform()]).encode()).hexdigest()[:24]
    return cache_dir() / "kernels" / f"{key}.so"


def failure_file(path: Path) -> Path:
    """Where a failed build of `path` is remembered: later starts skip the build (and its cost)."""
    return path.with_suffix(".failed")


def build(compiler: str, out: Path, timeout: float = BUILD_TIMEOUT_S) -> None:
    """Compile kernels.cpp into `out` (written under a temporary name, then renamed into place)."""
    root = Path(torch.__file__).parent
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        target = Path(tmp) / out.name
        cmd = [compiler, *_flags(root), str(SOURCE), f"-L{root / 'lib'}", "-lc10", "-ltorch_cpu",
               f"-Wl,-rpath,{root / 'lib'}", "-o", str(target)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the compiler ran past {timeout:g} s") from None
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "compiler failed")
        os.replace(target, out)


def _wanted() -> tuple[str, Path] | None:
    """(compiler, library path) where the kernels may be built and loaded here, else None (off,
    not Linux, no compiler)."""
    if os.environ.get("STEERCHAT_KERNELS", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    return (compiler, library_path(compiler)) if compiler is not None else None


def ready() -> bool:
    """Whether `ops()` answers at once: loaded already, built, or known not to build here."""
    if ops.cache_info().currsize:
        return True
    wanted = _wanted()
    return wanted is None or wanted[1].exists() or failure_file(wanted[1]).exists()


@functools.lru_cache(maxsize=None)
def ops():
    """torch.ops.steerchat with int8_gemv, rms_norm, add_rms_norm, qk_norm_rope and
    decode_attention; None where they are not available (see the module docstring). Loaded once
    per process. A failed build is remembered beside where the library would be, and said
    once; deleting that file (or STEERCHAT_KERNELS=rebuild) tries again."""
    wanted = _wanted()
    if wanted is None:
        return None
    compiler, path = wanted
    failed = failure_file(path)
    if failed.exists() and os.environ.get("STEERCHAT_KERNELS") != "rebuild":
        return None  # said when it failed; torch's own calls do the same work
    try:
        if not path.exists():
            print("steerchat: building the fast path's CPU kernels (once, about 15 s)", file=sys.stderr)
            build(compiler, path)
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as e:
        try:
            failed.parent.mkdir(parents=True, exist_ok=True)
            failed.write_text(f"{e}\n")
        except OSError:
            pass
        print(f"steerchat: the fast path's CPU kernels could not be built ({e}); using torch's own calls, "
              f"which are slower. This is remembered in {failed}: delete it, or set STEERCHAT_KERNELS=rebuild, "
              f"to try again.", file=sys.stderr)
        return None
    failed.unlink(missing_ok=True)
    return torch.ops.steerchat
