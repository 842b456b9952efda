"""A `/score_pairs` dispatch sets BentoML's slot aside while its groups wait for model loads: once per dispatch, however
many of its groups wait, so no more dispatches run than BentoML's limit allows."""

from __future__ import annotations

import asyncio

from bentoml._internal.marshal.dispatcher import NonBlockSema

from rerank_server.serving.dispatcher import _dispatch_slot, _Lease, slot_set_aside


def test_a_dispatch_whose_groups_all_wait_on_loads_lends_one_slot() -> None:
    semaphore = NonBlockSema(1)
    seen: list[int] = []

    async def group(started: asyncio.Event, done: asyncio.Event) -> None:
        async with slot_set_aside():
            started.set()
            await done.wait()  # this group's model is loading

    async def dispatch() -> None:
        assert semaphore.acquire()  # BentoML's dispatcher takes the slot before it calls the API
        _dispatch_slot.set(_Lease(semaphore))
        started = [asyncio.Event() for _ in range(3)]
        done = [asyncio.Event() for _ in range(3)]
        async with asyncio.TaskGroup() as tasks:  # as `score_pairs` runs a call's groups
            for pair in zip(started, done, strict=True):
                tasks.create_task(group(*pair))
            await asyncio.gather(*(event.wait() for event in started))
            seen.append(semaphore.sema)  # all three wait: one slot free for the next dispatch, not three
            done[0].set()
            await asyncio.sleep(0)
            seen.append(semaphore.sema)  # one load done, two still waiting: still lent
            for event in done[1:]:
                event.set()
        seen.append(semaphore.sema)  # every load done: the dispatch holds its slot again

    asyncio.run(dispatch())
    assert seen == [1, 1, 0]


def test_outside_a_bentoml_dispatch_nothing_is_lent() -> None:
    async def alone() -> None:
        async with slot_set_aside():
            await asyncio.sleep(0)

    asyncio.run(alone())  # no lease in this context: nothing to release, nothing raised
