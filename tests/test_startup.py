"""Start-up choices: the event loop the gateway runs on, and a garbage collector settled once
start-up is done."""

from __future__ import annotations

import gc
import sys

from tornado_imagegate.server import (
    GC_YOUNG_THRESHOLD,
    event_loop_factory,
    settle_garbage_collector,
)


def test_start_up_objects_are_frozen_and_young_collections_are_rarer():
    before = gc.get_threshold()
    try:
        settle_garbage_collector()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_without_uvloop_the_gateway_runs_on_asyncio(monkeypatch):
    assert event_loop_factory("asyncio") == ("asyncio", None)
    assert event_loop_factory("uvloop")[0].startswith("uvloop ")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert event_loop_factory("uvloop") == ("asyncio (uvloop is not installed)", None)
