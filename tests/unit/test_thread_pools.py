"""The worker's pools name their threads for the OS, so their CPU can be told apart from outside."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from visionq.thread_pools import named_pool


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc names threads on Linux")
def test_a_pools_threads_carry_its_name_in_the_os() -> None:
    def os_name() -> str:
        return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()

    with named_pool(2, "store") as pool, named_pool(1, "infer-a-long-model-name") as long:
        assert pool.submit(os_name).result() == "store_0"
        assert long.submit(os_name).result() == "infer-a-long-mo"  # cut to Linux's 15 bytes
    assert os_name() != "store_0"  # the calling thread keeps its own
