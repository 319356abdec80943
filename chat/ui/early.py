"""The app's first second: its options, a page that answers at once, the model loading.

Importing Gradio alone takes ~3 s here, and a newcomer's browser should not meet a refused
connection, so app.py calls `begin` before that import: it parses the options and holds the
app's address with a starting page. (Starting the model's load here too made the first reply
0.5 s later, not sooner: the imports of both threads share one interpreter lock, and
transformers' lazy module is not safe to import from two threads at once.)

`StartingPage(host, port)` serves, from the standard library only, a small page that says the
app is starting and reloads itself every second; any other path gets 503 with Retry-After, so an
API client that comes too early is told to retry. `close()` frees the port just before Gradio
binds it; the page's next reload finds the app.

    >>> page = StartingPage("127.0.0.1", 0)      # port 0: any free port
    >>> import urllib.request
    >>> b"starting" in urllib.request.urlopen(page.url).read()
    True
    >>> page.close()
"""
from __future__ import annotations

import argparse
import http.server
import os
import threading
from dataclasses import dataclass

PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>steerchat is starting</title>
<meta http-equiv="refresh" content="1"><style>body{font-family:system-ui,sans-serif;margin:4em auto;
max-width:36em;color:#333}</style></head><body><h1>steerchat</h1><p>The app is starting (a few
seconds); this page reloads by itself. The model then loads in the background, and the status
line at the top of the app says what it is doing.</p></body></html>"""


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        if self.path.split("?")[0] in ("/", ""):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(PAGE)
        else:
            self.send_response(503)
            self.send_header("Retry-After", "2")
            self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args) -> None:  # a starting page is not worth a log line per reload
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a browser that left mid-reload; nothing to report


class StartingPage:
    def __init__(self, host: str, port: int):
        self.server = _Server((host, port), _Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="steerchat-starting")
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def where(host: str | None, port: int | None) -> tuple[str, int]:
    """The address Gradio's launch will use: the arguments, else its environment variables, else
    its defaults (127.0.0.1:7860)."""
    host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = port if port is not None else int(os.environ.get("GRADIO_SERVER_PORT") or 7860)
    return host, port


def hold(host: str | None, port: int | None) -> StartingPage | None:
    """A starting page on the app's address, or None where the port is taken (then Gradio's own
    launch says so, as before)."""
    try:
        return StartingPage(*where(host, port))
    except OSError:
        return None


def parse_args(argv: list[str] | None, description: str | None = None) -> argparse.Namespace:
    """app.py's options (each also an environment variable, for Spaces)."""
    from chat.ui.pairings import PAIRINGS

    env = os.environ.get
    p = argparse.ArgumentParser(prog="app.py", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=env("STEERCHAT_MODEL") or None, help="hub id or local folder")
    p.add_argument("--dictionary", default=env("STEERCHAT_DICTIONARY") or None,
                   help="local path or hub owner/repo/sub/folder")
    p.add_argument("--layer", type=int, default=int(env("STEERCHAT_LAYER")) if env("STEERCHAT_LAYER") else None)
    p.add_argument("--preset", default=env("STEERCHAT_PRESET") or None, choices=sorted(PAIRINGS),
                   help="a hub model + dictionary pairing")
    p.add_argument("--device", default=env("STEERCHAT_DEVICE") or None, help="cpu, cuda, ... (default: cuda if any)")
    p.add_argument("--host", default=None, help="address to listen on (default: Gradio's, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860)")
    p.add_argument("--concurrency", type=int, default=1, help="replies generated at once (default 1)")
    return p.parse_args(argv)


@dataclass
class Begun:
    """What `begin` started: the options, the engine loader (not loading yet), the starting page."""

    args: argparse.Namespace
    loader: object  # chat.ui.loader.EngineLoader
    page: StartingPage | None = None

    @classmethod
    def start(cls, args: argparse.Namespace, page: StartingPage | None = None) -> "Begun":
        from chat.ui.gpu import on_zero_gpu
        from chat.ui.loader import EngineLoader
        from chat.ui.pairings import resolve

        try:
            model, dictionary = resolve(args.preset, args.model, args.dictionary)
        except ValueError as e:  # a preset named in STEERCHAT_PRESET bypasses argparse's choices
            if page is not None:
                page.close()
            raise SystemExit(f"error: {e}") from None
        zero = on_zero_gpu()
        loader = EngineLoader(model, dictionary, args.layer, device=args.device or ("cuda" if zero else None))
        if zero:
            loader.get()  # ZeroGPU wants the weights on "cuda" before the first request forks
        return cls(args, loader, page)

    def release_port(self) -> None:
        if self.page is not None:
            self.page.close()
            self.page = None


def begin(argv: list[str], description: str | None = None) -> Begun:
    """Parse the options and hold the address with the starting page."""
    args = parse_args(argv, description)
    return Begun.start(args, hold(args.host, args.port))
