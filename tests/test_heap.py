"""gradwatch.run.heap: the garbage collector's full passes skip what outlives the fit, and
the interpreter's final pass is skipped, without keeping one job's garbage for the next."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import weakref

from gradwatch.run.heap import frozen_heap


class Node:
    """An object held only by a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_frozen_heap_hides_older_objects_until_the_block_ends():
    old = Node()
    old_ref = weakref.ref(old)
    with frozen_heap():
        del old
        gc.collect()
        assert old_ref() is not None, "a full pass walked an object made before the block"
        new = Node()
        new_ref = weakref.ref(new)
        del new
        gc.collect()
        assert new_ref() is None, "garbage made inside the block was kept"
    gc.collect()
    assert old_ref() is None, "the block's frozen objects stayed frozen after it"
    assert gc.get_freeze_count() == 0


def _exit_output(skip: bool) -> str:
    code = textwrap.dedent(f"""
        import atexit
        from gradwatch.run.heap import skip_gc_at_exit

        class Loud:
            def __init__(self):
                self.me = self
            def __del__(self):
                print("finalized", flush=True)

        if {skip}:
            skip_gc_at_exit()
            skip_gc_at_exit()  # a worker runs many jobs: one registration
        atexit.register(lambda: print("atexit ran", flush=True))
        garbage = Loud()
        del garbage
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_skip_gc_at_exit_skips_only_the_final_collection():
    # Python's final pass finalizes a cycle that no earlier pass reached; frozen, it does not.
    assert _exit_output(skip=False).splitlines() == ["atexit ran", "finalized"]
    assert _exit_output(skip=True).splitlines() == ["atexit ran"]
