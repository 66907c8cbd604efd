"""The reconcile context's per-object locks."""

from __future__ import annotations

import gc

from kubedistill_operator.reconcile.context import Context


def test_one_lock_per_object_kept_only_while_in_use():
    ctx = Context(api=None)  # type: ignore[arg-type]  # the locks need no API
    held = ctx.lock("distillationjobs", "ml", "bbc")
    assert ctx.lock("distillationjobs", "ml", "bbc") is held
    assert ctx.lock("distillationjobs", "ml", "other") is not held
    with held:
        assert held.acquire(blocking=False)  # re-entrant: a handler may reconcile the object it holds
        held.release()
    gc.collect()
    assert list(ctx._locks) == [("distillationjobs", "ml", "bbc")]  # "other" was dropped with its last user
    del held
    gc.collect()
    assert not ctx._locks  # the table does not keep every object ever seen
