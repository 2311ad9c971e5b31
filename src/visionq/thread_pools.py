"""Thread pools whose threads carry their Python name in the OS too (``named_pool``).

Python does not name its threads for the kernel (before 3.14), so ``top -H``, py-spy and
``/proc/<pid>/task/*/comm`` show every thread of the worker as ``python``. Named, the CPU each
pool spends (the store calls', the model's, the decodes') can be told apart from outside, as
``bench/ceiling.py`` does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from concurrent.futures import ThreadPoolExecutor

_OS_NAME_BYTES = 15  # Linux's limit, without the terminating NUL


def _set_os_name() -> None:
    """The calling thread's OS name becomes its Python name (cut to 15 bytes); where the C
    library has no ``pthread_setname_np``, nothing happens."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        set_name = libc.pthread_setname_np
        self = libc.pthread_self
    except (OSError, AttributeError):
        return
    self.restype = ctypes.c_void_p
    set_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    set_name(self(), threading.current_thread().name.encode()[:_OS_NAME_BYTES])


def named_pool(threads: int, name: str) -> ThreadPoolExecutor:
    """``ThreadPoolExecutor(threads, thread_name_prefix=name)`` whose threads are named so in the OS."""
    return ThreadPoolExecutor(threads, thread_name_prefix=name, initializer=_set_os_name)
