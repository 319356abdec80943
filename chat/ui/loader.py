"""The app's one engine: loaded once, in a background thread, with a status line meanwhile.

Requests that need the engine wait for the load; the status line never waits. When a model or
dictionary from the hub cannot be loaded (offline, gated, typo), the app falls back to the
embedded default and the status line says what failed, so a Space still comes up.
"""
from __future__ import annotations

import threading
import time

from chat.errors import ModelLoadError


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class EngineLoader:
    def __init__(self, model: str | None = None, dictionary: str | None = None, layer: int | None = None,
                 *, device: str | None = None, fallback: bool = True, engine=None):
        self.model, self.dictionary, self.layer, self.device = model, dictionary, layer, device
        self.fallback = fallback
        self.note = ""  # why the default was loaded instead of what was asked for
        self._engine = engine
        self._error: str | None = None
        self._phase = "waiting to load"
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()  # apart from _lock, which is held for the whole load

    @classmethod
    def ready(cls, engine) -> "EngineLoader":
        """A loader around an engine that is already loaded (tests, notebooks)."""
        return cls(engine=engine)

    def start(self) -> None:
        """Begin loading in the background (once), so the first visitor does not wait for all of it."""
        with self._start_lock:
            if self._thread is None and not self.loaded:
                self._thread = threading.Thread(target=self._get_quietly, daemon=True, name="steerchat-load")
                self._thread.start()

    def _get_quietly(self) -> None:
        try:
            self.get()
        except ModelLoadError:
            pass  # kept in self._error; the status line and every request report it

    def get(self):
        """The engine, loading it first if needed; ModelLoadError when loading failed."""
        with self._lock:
            if self._engine is None and self._error is None:
                self._load()
        if self._error is not None:
            raise ModelLoadError(self._error)
        return self._engine

    @property
    def loaded(self) -> bool:
        """Finished loading, successfully or not."""
        return self._engine is not None or self._error is not None

    @property
    def failed(self) -> bool:
        return self._error is not None

    def _load(self) -> None:
        try:
            self._load_engine()
        finally:
            from chat.runtime import gcpause

            gcpause.resume()  # `python app.py` paused collecting until now (chat/runtime/gcpause.py)

    def _load_engine(self) -> None:
        from chat.engine import load
        from chat.runtime.models import load_model

        self._started = time.monotonic()
        try:
            self._phase = f"loading the model {self.model or 'gemma-3-270m (embedded)'}"
            lm = load_model(self.model, device=self.device, progress=self._set_phase)
            self._phase = f"loading the dictionary {self.dictionary or '(embedded)'}"
            # A dictionary without labels may fetch Neuronpedia's: the status line shows each batch.
            self._engine = load(self.model, self.dictionary, self.layer, device=self.device, lm=lm,
                                progress=self._set_phase)
        except Exception as e:  # hub, network and format errors come in many types
            asked = " + ".join(str(x) for x in (self.model, self.dictionary) if x)
            if not (self.fallback and asked):
                self._error = f"could not load the model: {_one_line(e)}"
                return
            self.note = f"could not load {asked} ({_one_line(e)}); using the embedded default instead"
            self._phase = "loading the embedded default"
            try:
                self._engine = load(device=self.device)
            except Exception as e2:
                self._error = f"could not load the embedded default either: {_one_line(e2)}"

    def _set_phase(self, phase: str) -> None:
        self._phase = phase

    def status(self) -> str:
        """One line for the page: what is loaded, or what is happening, or what failed."""
        if self._error is not None:
            return f"⚠ {self._error}"
        if self._engine is None:  # plain text: the hourglass glyph is a missing-glyph box in Debian's Chromium
            return f"**Starting:** {self._phase} … {time.monotonic() - self._started:.0f} s"
        status = f"Loaded: {self._engine.status()}"
        return f"{status}  \n⚠ {self.note}" if self.note else status
