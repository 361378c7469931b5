"""Third-party warnings and hints off the terminal during a CLI run, into the rank's log instead.

`digin <task>` runs inside `third_party_to_log()`. While it is active:
- Python warnings issued by code outside digin (torch, diffusers, transformers, timm, ...) are kept, not printed;
- warning records of third-party loggers (diffusers' "pip install accelerate" hint, transformers, torch._dynamo) are
  kept: the handlers those libraries attach to their own loggers get a filter, and a handler on the root logger
  catches the rest (they would otherwise reach logging's last-resort stderr printer);
- third-party progress bars (transformers' "Writing model shards") are off.
The stage runner hands its rank log to `attach_log` when the log opens: every distinct message goes there once per
log file as a `third_party` event, including those seen before it opened (model loading comes first). What never
reaches a log is counted in one line at the end. digin's own prints, progress lines and warnings are untouched.
`verbose=true` (the CLI) does not enter the context: the libraries print as they always do.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import sys
import threading
import warnings

# Top-level packages whose import may add terminal handlers to their loggers or start progress bars.
WATCHED_PACKAGES = frozenset({"torch", "torchvision", "diffusers", "transformers", "huggingface_hub", "timm",
                              "open_clip", "xformers", "triton", "lpips", "segment_anything_hq", "open_flamingo",
                              "accelerate", "kornia", "safetensors", "tokenizers"})
# (module, disable, enable, query, whether the query answers "enabled") for third-party progress bars.
PROGRESS_BARS = (("transformers.utils.logging", "disable_progress_bar", "enable_progress_bar",
                  "is_progress_bar_enabled", True),
                 ("diffusers.utils.logging", "disable_progress_bar", "enable_progress_bar",
                  "is_progress_bar_enabled", True),
                 ("huggingface_hub.utils", "disable_progress_bars", "enable_progress_bars",
                  "are_progress_bars_disabled", False))
EVENT = "third_party"

_active: "_Capture | None" = None


def _is_digin(module_name: str) -> bool:
    return (module_name == "digin" or module_name.startswith("digin.")) and module_name != __name__


class _Capture:
    """Distinct third-party messages: written once to each attached log, or pending until a log attaches."""

    def __init__(self):
        self.lock = threading.RLock()
        self.pending: dict[str, dict] = {}
        self.sink = None
        self.sink_seen: set[str] = set()
        self.logged: set[str] = set()  # ever written to some log

    def add(self, fields: dict):
        key = f"{fields.get('source')}\0{fields.get('message')}"
        with self.lock:
            if self.sink is None:
                self.pending.setdefault(key, fields)
            elif key not in self.sink_seen:
                self.sink_seen.add(key)
                self.logged.add(key)
                self.sink(EVENT, **fields)

    def attach(self, sink):
        with self.lock:
            self.sink, self.sink_seen = sink, set()
            pending, self.pending = self.pending, {}
            for fields in pending.values():
                self.add(fields)

    def detach(self, sink):
        with self.lock:
            if self.sink == sink:
                self.sink, self.sink_seen = None, set()

    def never_logged(self) -> int:
        return len([k for k in self.pending if k not in self.logged])


class _Divert(logging.Filter):
    """On a third-party handler: keep a warning (or worse) for the log instead of printing it. Lower levels pass:
    they only arrive when someone turned that library's debug logging on (TORCH_LOGS=..., set_verbosity_info)."""

    def filter(self, record: logging.LogRecord) -> bool:
        cap = _active
        if cap is None or _is_digin(record.name) or record.levelno < logging.WARNING:
            return True
        cap.add({"source": record.name, "level": record.levelname, "message": record.getMessage()})
        return False


class _RootCatcher(logging.Handler):
    """On the root logger: third-party records that propagate there are kept; digin's own go to stderr."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.divert = _Divert()

    def emit(self, record: logging.LogRecord):
        if self.divert.filter(record):
            sys.stderr.write(self.format(record) + "\n")


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `callback` after a watched top-level package has finished importing (its handlers exist by then)."""

    def __init__(self, callback):
        self.callback = callback
        self.busy: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in WATCHED_PACKAGES or fullname in self.busy:
            return None
        self.busy.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)  # the other finders answer (we are busy for this name)
        finally:
            self.busy.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _NotifyingLoader(spec.loader, self.callback)
        return spec


class _NotifyingLoader(importlib.abc.Loader):
    def __init__(self, loader, callback):
        self.loader, self.callback = loader, callback

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self.loader  # invisible once the module exists
        self.loader.exec_module(module)
        self.callback()

    def __getattr__(self, name):
        return getattr(self.loader, name)


class _Quieter:
    """What one `third_party_to_log()` changed, so that leaving it restores everything."""

    def __init__(self, capture: _Capture):
        self.capture = capture
        self.filtered: list[logging.Handler] = []
        self.root = _RootCatcher()
        self.finder = _AfterImport(self.quiet_loaded_libraries)
        self.bars_disabled: list[str] = []
        self.showwarning = None

    def show_warning(self, message, category, filename, lineno, file=None, line=None):
        if _issued_by_digin() and "Triggered internally at" not in str(message):
            return self.showwarning(message, category, filename, lineno, file, line)
        self.capture.add({"source": "warnings", "category": category.__name__, "message": str(message),
                          "where": f"{filename}:{lineno}"})

    def quiet_loaded_libraries(self):
        """Divert the terminal handlers third-party libraries have attached so far; stop their progress bars."""
        loggers = [logging.root] + list(logging.root.manager.loggerDict.values())  # root: a basicConfig() too
        for logger in loggers:
            if not isinstance(logger, logging.Logger) or _is_digin(logger.name):
                continue
            for h in logger.handlers:  # stream handlers, torch's own stderr handler; files keep what they get
                if (not isinstance(h, (logging.FileHandler, _RootCatcher))
                        and not any(isinstance(f, _Divert) for f in h.filters)):
                    h.addFilter(_Divert())
                    self.filtered.append(h)
        for module, off, _, query, answers_enabled in PROGRESS_BARS:
            mod = sys.modules.get(module)
            if mod is None or module in self.bars_disabled or not hasattr(mod, off) or not hasattr(mod, query):
                continue
            if bool(getattr(mod, query)()) == answers_enabled:  # on now: turn it off, and back on at the end
                getattr(mod, off)()
                self.bars_disabled.append(module)

    def start(self):
        self.showwarning, warnings.showwarning = warnings.showwarning, self.show_warning
        logging.root.addHandler(self.root)
        sys.meta_path.insert(0, self.finder)
        self.quiet_loaded_libraries()

    def stop(self):
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self.finder)
        logging.root.removeHandler(self.root)
        if warnings.showwarning == self.show_warning:
            warnings.showwarning = self.showwarning
        for h in self.filtered:
            for f in [f for f in h.filters if isinstance(f, _Divert)]:
                h.removeFilter(f)
        for module, _, on, _, _ in PROGRESS_BARS:
            if module in self.bars_disabled and module in sys.modules:
                getattr(sys.modules[module], on)()


def _issued_by_digin() -> bool:
    """Whether the code that called warnings.warn is digin's (the first frame outside `warnings` and this module)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") in ("warnings", __name__):
        frame = frame.f_back
    return frame is not None and _is_digin(frame.f_globals.get("__name__", ""))


@contextlib.contextmanager
def third_party_to_log(enabled: bool = True):
    """Keep third-party warnings, log records and progress bars off the terminal (see the module docstring)."""
    global _active
    if not enabled or _active is not None:
        yield
        return
    capture = _Capture()
    quieter = _Quieter(capture)
    _active = capture
    quieter.start()
    try:
        yield
    finally:
        quieter.stop()
        _active = None
        n = capture.never_logged()
        if n:
            print(f"digin: {n} third-party warning(s) hidden (verbose=true shows them)", file=sys.stderr,
                  flush=True)


def attach_log(sink):
    """From now on (and for the messages seen so far), third-party messages go to `sink(EVENT, **fields)` — the
    rank log's `event` method. Nothing happens outside `third_party_to_log()`."""
    if _active is not None:
        _active.attach(sink)


def detach_log(sink):
    if _active is not None:
        _active.detach(sink)
