"""The ggml-python bindings, imported once and mended.

Only ml/ggml imports this. It fixes the binding's known defects before anything calls it.
"""

from __future__ import annotations

import ctypes
import logging
import os

# ggml forks gdb for a backtrace before it aborts; a server must never hang on that.
os.environ.setdefault("GGML_NO_BACKTRACE", "1")

import ggml  # noqa: E402  (the environment variable must be set first)


def _fix_pointer_restypes() -> list[str]:
    """Give every binding that declares a typing.NewType as restype a real pointer restype.

    ggml-python 0.0.45 declares some functions' restype as a NewType over int; ctypes then
    treats the result as a C int and truncates a 64-bit pointer (ggml_backend_cpu_buffer_type,
    ggml_backend_cpu_buffer_from_ptr, ...), which crashes on first use.
    """
    fixed = []
    for name in dir(ggml):
        fn = getattr(ggml, name)
        if not isinstance(fn, ctypes._CFuncPtr):
            continue
        restype = fn.restype
        if restype is None or isinstance(restype, type):
            continue  # a real ctypes type (or void)
        fn.restype = ctypes.c_void_p
        fixed.append(name)
    return fixed


FIXED_RESTYPES = _fix_pointer_restypes()


_log = logging.getLogger("pollama.ggml")
# ggml log levels: 1 debug, 2 info, 3 warn, 4 error, 5 cont (continues the previous line).
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR, 5: logging.DEBUG}


@ggml.ggml_log_callback
def _forward_log(level: int, text: bytes, _user: int) -> None:
    # ggml prints to stderr by default (e.g. a line per repacked tensor); route it to logging.
    _log.log(_LEVELS.get(level, logging.DEBUG), "%s", text.decode(errors="replace").rstrip())


ggml.ggml_log_set(_forward_log, None)
