"""Handlers report failures as one-line `gr.Error`s; a request never takes the app down.

User errors (chat.errors.USER_ERRORS, and the gr.Errors handlers raise themselves) show their
own message and take one line of the server log. Anything else is a bug: it is logged with its
traceback on the server, once, and shown as a short "internal error" line.
"""
from __future__ import annotations

import functools
import inspect
import logging

import gradio as gr

from chat.errors import USER_ERRORS

log = logging.getLogger("steerchat.app")


def _as_gr_error(e: Exception) -> gr.Error:
    if isinstance(e, gr.Error):
        e.print_exception = False  # Gradio would print a traceback for it
        log.warning("request refused: %s", e.message)
        return e
    if isinstance(e, USER_ERRORS):
        text = str(e).strip().splitlines()
        line = text[0] if text else type(e).__name__
        log.warning("request refused: %s", line)
        return gr.Error(line, print_exception=False)
    log.exception("internal error in a request")
    return gr.Error(f"internal error ({type(e).__name__}: {e}); the server log has the details", print_exception=False)


def reported(fn):
    """Wrap a handler (function or generator) so every failure becomes a one-line gr.Error."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:
                raise _as_gr_error(e) from None
        return generator

    @functools.wraps(fn)
    def function(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise _as_gr_error(e) from None
    return function


def whole(value, name: str) -> int:
    """An integer from a request: sliders and JSON clients send 64.0 for 64; anything not whole
    is a ValueError, which `reported` shows as one line."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value
