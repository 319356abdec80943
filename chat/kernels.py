"""The fast path's single-row CPU kernels (chat/kernels.cpp), built once and loaded as torch ops.

`ops()` returns `torch.ops.steerchat` once built, or None where they cannot be (no C++
compiler, not Linux, `STEERCHAT_KERNELS=0`): the lean block then keeps torch's own calls. The
build runs the machine's `c++` with `-march=native` against the installed torch's headers
(about 15 s on 2 cores, once) and is cached beside the converted models
(`chat.models.cache_dir()/kernels/<key>.so`), the key covering the source, torch's version and
folder (the library links to it), the compiler and the CPU's flags, so another machine or torch
builds its own.
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

SOURCE = Path(__file__).with_name("kernels.cpp")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def library_path(compiler: str) -> Path:
    from chat.models import cache_dir

    key = hashlib.sha256("\n".join([SOURCE.read_text(), torch.__version__, str(Path(torch.__file__).parent),
                                    compiler, _cpu_flags(), sysconfig.get_platform()]).encode()).hexdigest()[:24]
    return cache_dir() / "kernels" / f"{key}.so"


def build(compiler: str, out: Path) -> None:
    """Compile kernels.cpp into `out` (written under a temporary name, then renamed into place)."""
    root = Path(torch.__file__).parent
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        target = Path(tmp) / out.name
        cmd = [compiler, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fopenmp",
               f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
               f"-I{root / 'include'}", f"-I{root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
               str(SOURCE), f"-L{root / 'lib'}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{root / 'lib'}",
               "-o", str(target)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "compiler failed")
        os.replace(target, out)


@functools.lru_cache(maxsize=None)
def ops():
    """torch.ops.steerchat with int8_gemv, rms_norm, add_rms_norm, qk_norm_rope and
    decode_attention; None where they are not available (see the module docstring). Loaded once
    per process."""
    if os.environ.get("STEERCHAT_KERNELS", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        return None
    path = library_path(compiler)
    try:
        if not path.exists():
            print("steerchat: building the fast path's CPU kernels (once, about 15 s)", file=sys.stderr)
            build(compiler, path)
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as e:
        print(f"steerchat: fast path without its CPU kernels ({e})", file=sys.stderr)
        return None
    return torch.ops.steerchat
