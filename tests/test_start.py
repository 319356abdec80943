"""Starting: the app's page answers before Gradio is imported; the cold-start benchmark's parts."""
from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from chat.measure import coldstart
from chat.ui import early


def test_the_starting_page_answers_and_steps_aside():
    page = early.StartingPage("127.0.0.1", 0)
    try:
        body = urllib.request.urlopen(page.url, timeout=5).read()
        assert b"starting" in body and b'http-equiv="refresh"' in body
        with pytest.raises(urllib.error.HTTPError) as e:  # an API client is told to come back
            urllib.request.urlopen(page.url + "gradio_api/info", timeout=5)
        assert e.value.code == 503 and e.value.headers["Retry-After"]
    finally:
        page.close()
    with pytest.raises(urllib.error.URLError):  # the port is free for Gradio
        urllib.request.urlopen(page.url, timeout=2)


def test_starting_page_takes_gradios_address(monkeypatch):
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    assert early.where(None, None) == ("0.0.0.0", 7999)
    assert early.where("127.0.0.1", 8000) == ("127.0.0.1", 8000)


def test_a_taken_port_leaves_the_error_to_gradio():
    page = early.StartingPage("127.0.0.1", 0)
    try:
        assert early.hold("127.0.0.1", page.server.server_address[1]) is None
    finally:
        page.close()


def test_begin_parses_the_options_and_holds_the_address(monkeypatch):
    begun = early.begin(["--port", "0", "--concurrency", "2"])
    try:
        assert begun.args.concurrency == 2 and not begun.loader.loaded and begun.page is not None
    finally:
        begun.release_port()
    assert begun.page is None
    with pytest.raises(SystemExit):
        early.parse_args(["--preset", "no-such-preset"])


def test_cold_start_report_takes_the_median_process():
    runs = [{"stages": {"a": 1.0, "b": t - 1.0}, "total_s": t} for t in (5.0, 3.0, 4.0)]
    assert coldstart.median_run(runs, "total_s")["total_s"] == 4.0
    table = coldstart.stage_table(runs[2])
    assert "| a | 1.00 |" in table and "**4.00**" in table
    s = coldstart.summary(runs, [{"page_s": 0.2, "app_s": 4.0, "first_reply_s": 8.0}])
    assert s["cli_first_token_s"] == 4.0 and s["app_page_s"] == 0.2 and s["app_first_reply_s"] == 8.0


@pytest.mark.slow
def test_the_app_answers_first_then_replies():
    """`python app.py` in a fresh process: a page answers, then the app's, then a reply comes back
    (the embedded model; times are the benchmark's business, only their order is checked)."""
    ref = {"model": None, "dictionary": None, "layer": None, "device": None, "allow_pickle": False}
    run = coldstart.app_start(ref)
    assert 0 < run["page_s"] <= run["app_s"] <= run["first_reply_s"]


def test_collecting_pauses_while_starting_and_resumes_after_the_load(tiny_model_dir, tmp_path):
    """`python -m chat` pauses the collector until its engine is loaded, then freezes what the
    start built and collects again; a library caller, which never paused, is left alone."""
    import gc
    import os
    import subprocess
    import sys

    from chat.runtime import gcpause
    from features import formats
    from features.dictionary import Dictionary

    dictionary_dir = tmp_path / "dictionary"
    formats.save(Dictionary.random(32, 48, activation="topk", k=6, seed=4, hook_layer=1), dictionary_dir)
    gcpause.resume()  # not paused: nothing happens
    assert gc.isenabled() and gc.get_freeze_count() == 0
    code = ("import gc, sys\nfrom chat.runtime import gcpause\ngcpause.pause()\nassert not gc.isenabled()\n"
            "from chat.cli import main, _engine\nfrom chat.cli import build_parser\n"
            f"args = build_parser().parse_args(['encode', 'hi', '--model', {str(tiny_model_dir)!r}, "
            f"'--dictionary', {str(dictionary_dir)!r}])\n"
            "_engine(args)\nassert gc.isenabled() and gc.get_freeze_count() > 1000, gc.get_freeze_count()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "STEERCHAT_FAST": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
