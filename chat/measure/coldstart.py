"""How fast steerchat starts, in fresh processes, with where the time goes (`python -m chat bench`).

- **CLI first token**: a child process does what `python -m chat reply` does, stamping each
  stage (torch, transformers and the engine's modules, the model, the dictionary and its
  catalog, the first streamed token of a reply), from the moment the parent started it.
- **App page, app first reply**: `python app.py` on a free port; the parent asks for `/` until
  a page answers, then until Gradio's page does, then calls `/generate` for a one-token reply
  (it waits for the model).

Every figure is the median of `runs` processes; the model cache is warm (the benchmark's own
process has loaded the model already), as on any start but the first.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLI_FIRST_TOKEN_TARGET_S = 3.0  # issue 28
APP_PAGE_TARGET_S = 3.0
APP_FIRST_REPLY_TARGET_S = 6.0

_CLI_CHILD = r"""
import json, sys, time
start = float(sys.argv[1]); ref = json.loads(sys.argv[2]); stamps = {}
def stamp(name): stamps[name] = time.time() - start - sum(stamps.values())
from chat.runtime import gcpause
gcpause.pause()  # as `python -m chat` does
import torch
stamp("python and torch")
import transformers
from chat.engine import load
from chat.runtime.models import load_model
stamp("transformers and the engine's modules")
lm = load_model(ref["model"], device=ref["device"])
stamp("model: Gemma 3 modules, tokenizer, weights" + (", int8 form, kernels" if lm.weights == "int8" else ""))
engine = load(ref["model"], ref["dictionary"], ref["layer"], device=ref["device"], allow_pickle=ref["allow_pickle"], lm=lm)
gcpause.resume()
stamp("dictionary and catalog")
stream = engine.stream("Hi", max_new_tokens=8)
tokens = iter(stream)
next(tokens)
stamp("first token")
stream.stop()
for _ in tokens:  # let the worker finish: exiting under a running torch thread aborts
    pass
with open("/proc/self/status") as f:  # this program's own peak (ru_maxrss would be the parent's)
    peak = next((int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM:")), None)
print(json.dumps({"stages": stamps, "total_s": sum(stamps.values()), "max_rss_mib": peak}))
"""


def _env(fast: bool) -> dict:
    return {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "GRADIO_ANALYTICS_ENABLED": "False", "STEERCHAT_FAST": "1" if fast else "0"}


def cli_first_token(ref: dict, fast: bool = True) -> dict:
    """One fresh process: {"stages": {stage: seconds}, "total_s": seconds to the first token}."""
    start = time.time()
    done = subprocess.run([sys.executable, "-c", _CLI_CHILD, repr(start), json.dumps(ref)], cwd=REPO,
                          env=_env(fast), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the cold-start process failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read()
    except (urllib.error.URLError, OSError):
        return None


def _first_reply(base: str) -> None:
    """A one-token reply through /generate (Gradio's two-step call API: post, then read the events)."""
    body = json.dumps({"data": ["Hi", {}, "add", 1, 0, 0.0]}).encode()  # message, steer, mode, tokens, seed, temperature
    req = urllib.request.Request(f"{base}gradio_api/call/generate", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        event = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(f"{base}gradio_api/call/generate/{event}", timeout=300) as r:
        events = r.read().decode()
    if "event: complete" not in events:
        raise RuntimeError(f"/generate did not complete: {events[-200:]}")


def app_start(ref: dict, fast: bool = True, timeout: float = 300) -> dict:
    """One `python app.py`: seconds until a page answers, until the app's page does, until a
    first reply comes back."""
    port = _free_port()
    args = [sys.executable, "app.py", "--port", str(port)]
    for flag in ("model", "dictionary", "layer", "device"):
        if ref.get(flag) is not None:
            args += [f"--{flag}", str(ref[flag])]
    log = tempfile.TemporaryFile(mode="w+")  # read only when the app fails: a pipe nobody reads would block it
    start = time.time()
    proc = subprocess.Popen(args, cwd=REPO, env=_env(fast), stdout=log, stderr=subprocess.STDOUT)
    base, out = f"http://127.0.0.1:{port}/", {}
    try:
        while "app_s" not in out:
            if time.time() - start > timeout or proc.poll() is not None:
                log.seek(0)
                last = (log.read().strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"the app did not come up ({last})")
            page = _get(base)
            if page is not None:
                out.setdefault("page_s", time.time() - start)
                if b"gradio" in page.lower():
                    out["app_s"] = time.time() - start
            time.sleep(0.05 if "page_s" not in out else 0.5)  # then as a browser's reloads do, not 20 a second
        _first_reply(base)
        out["first_reply_s"] = time.time() - start
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return out


def median_run(runs: list[dict], key: str) -> dict:
    """The run whose `key` is the median (its stages belong to one real process)."""
    ordered = sorted(runs, key=lambda r: r[key])
    return ordered[len(ordered) // 2]


def stage_table(run: dict) -> str:
    rows = [f"| {name} | {s:.2f} |" for name, s in run["stages"].items()]
    return "\n".join(["| stage | s |", "|---|---|", *rows, f"| **first token** | **{run['total_s']:.2f}** |"])


def summary(cli_runs: list[dict], app_runs: list[dict]) -> dict:
    cli = median_run(cli_runs, "total_s") if cli_runs else None
    return {
        "cli_first_token_s": cli["total_s"] if cli else None,
        "cli_stages": cli["stages"] if cli else None,
        "cli_runs_s": [r["total_s"] for r in cli_runs],
        "app_page_s": statistics.median(r["page_s"] for r in app_runs) if app_runs else None,
        "app_gradio_s": statistics.median(r["app_s"] for r in app_runs) if app_runs else None,
        "app_first_reply_s": statistics.median(r["first_reply_s"] for r in app_runs) if app_runs else None,
        "app_runs": app_runs,
    }
