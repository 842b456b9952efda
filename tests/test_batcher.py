"""The continuous batcher on its own: merging, no idle waits, the queue bound, cancellation, retries, draining."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Iterator

import pytest
import torch

from rerank_server.engine.batcher import BatcherClosedError, ContinuousBatcher, QueueFullError
from rerank_server.recipes import EncodedPairs

POISON = -1


class GatedScorer:
    """Stands in for a model: the logit of a pair is its first token id; a gate holds the model busy on demand."""

    device = "cpu"

    def __init__(self, error: type[Exception] = RuntimeError) -> None:
        self.calls: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.error = error

    def forward(self, encoded: EncodedPairs) -> torch.Tensor:
        ids = [tokens[0] for tokens in encoded.input_ids]
        self.calls.append(ids)
        self.started.set()
        assert self.gate.wait(10)
        if POISON in ids:
            raise self.error("this batch holds a request the model cannot take")
        return torch.tensor(ids, dtype=torch.float32)


def pairs(*first_tokens: int) -> EncodedPairs:
    return EncodedPairs([[token, 7] for token in first_tokens])


@pytest.fixture()
def batcher() -> Iterator[ContinuousBatcher]:
    running = ContinuousBatcher(max_batch_pairs=8, max_queue_pairs=10)
    yield running
    running.close(timeout=10)


def hold_model(batcher: ContinuousBatcher, scorer: GatedScorer):
    """Start a batch that keeps the model busy until the gate opens."""
    scorer.gate.clear()
    busy = batcher.submit("m", scorer, pairs(100))
    assert scorer.started.wait(5)
    return busy


def test_requests_queued_while_the_model_is_busy_run_as_one_batch(batcher) -> None:
    scorer = GatedScorer()
    busy = hold_model(batcher, scorer)
    queued = [batcher.submit("m", scorer, pairs(i, i + 10)) for i in range(3)]
    scorer.gate.set()
    assert busy.result(5).tolist() == [100]
    assert [f.result(5).tolist() for f in queued] == [[0, 10], [1, 11], [2, 12]]
    assert scorer.calls == [[100], [0, 10, 1, 11, 2, 12]]


def test_a_lone_request_after_a_burst_does_not_wait(batcher) -> None:
    scorer = GatedScorer()
    busy = hold_model(batcher, scorer)
    burst = [batcher.submit("m", scorer, pairs(i)) for i in range(5)]
    scorer.gate.set()
    for future in [busy, *burst]:
        future.result(5)
    started = time.perf_counter()
    assert batcher.submit("m", scorer, pairs(42)).result(5).tolist() == [42]
    assert time.perf_counter() - started < 0.5  # no learned wait for partners: the model was idle
    assert scorer.calls[-1] == [42]


def test_batches_stop_at_the_pair_cap_and_never_mix_models(batcher) -> None:
    scorer, other = GatedScorer(), GatedScorer()
    busy = hold_model(batcher, scorer)
    first = batcher.submit("m", scorer, pairs(1, 2, 3, 4, 5))
    second_model = batcher.submit("other", other, pairs(9))
    third = batcher.submit("m", scorer, pairs(6))  # fits beside `first` (6 pairs ≤ 8)
    fourth = batcher.submit("m", scorer, pairs(7, 8, 9))  # would make 9: next batch
    scorer.gate.set()
    for future in (busy, first, second_model, third, fourth):
        future.result(5)
    assert scorer.calls == [[100], [1, 2, 3, 4, 5, 6], [7, 8, 9]] and other.calls == [[9]]


def test_a_full_queue_refuses_at_once(batcher) -> None:
    scorer = GatedScorer()
    busy = hold_model(batcher, scorer)
    waiting = batcher.submit("m", scorer, pairs(*range(8)))
    started = time.perf_counter()
    with pytest.raises(QueueFullError, match="RERANK_MAX_QUEUE_PAIRS"):
        batcher.submit("m", scorer, pairs(8, 9, 10))
    assert time.perf_counter() - started < 0.05
    fits = batcher.submit("m", scorer, pairs(8, 9))
    scorer.gate.set()
    assert [f.result(5).tolist() for f in (busy, waiting, fits)] == [[100], list(range(8)), [8, 9]]
    assert batcher.queued_pairs == 0


def test_a_request_larger_than_the_queue_runs_when_nothing_waits(batcher) -> None:
    scorer = GatedScorer()
    assert batcher.submit("m", scorer, pairs(*range(20))).result(5).tolist() == list(range(20))


def test_a_cancelled_request_is_taken_out_of_the_queue(batcher) -> None:
    scorer = GatedScorer()
    busy = hold_model(batcher, scorer)
    gone = batcher.submit("m", scorer, pairs(1))
    kept = batcher.submit("m", scorer, pairs(2))
    assert gone.cancel()
    scorer.gate.set()
    busy.result(5)
    assert kept.result(5).tolist() == [2]
    assert scorer.calls == [[100], [2]]


@pytest.mark.parametrize("error", [RuntimeError, torch.OutOfMemoryError])
def test_a_failing_batch_is_split_so_only_the_bad_request_fails(error: type[Exception]) -> None:
    batcher = ContinuousBatcher(max_batch_pairs=64, max_queue_pairs=64)
    scorer = GatedScorer(error)
    busy = hold_model(batcher, scorer)
    good = [batcher.submit("m", scorer, pairs(i, i)) for i in range(1, 4)]
    bad = batcher.submit("m", scorer, pairs(POISON))
    more = [batcher.submit("m", scorer, pairs(i)) for i in range(4, 7)]
    scorer.gate.set()
    busy.result(5)
    assert [f.result(5).tolist() for f in good] == [[1, 1], [2, 2], [3, 3]]
    assert [f.result(5).tolist() for f in more] == [[4], [5], [6]]
    with pytest.raises(error):
        bad.result(5)
    batcher.close(timeout=10)


def test_closing_finishes_queued_work_and_refuses_new_work(batcher) -> None:
    scorer = GatedScorer()
    busy = hold_model(batcher, scorer)
    queued = batcher.submit("m", scorer, pairs(1))
    closing = threading.Thread(target=batcher.close, kwargs={"timeout": 10})
    closing.start()
    time.sleep(0.1)
    with pytest.raises(BatcherClosedError):
        batcher.submit("m", scorer, pairs(2))
    scorer.gate.set()
    closing.join(10)
    assert busy.result(0).tolist() == [100] and queued.result(0).tolist() == [1]


def test_the_model_thread_survives_a_failure_outside_the_model(batcher, monkeypatch) -> None:
    scorer = GatedScorer()
    monkeypatch.setattr(batcher, "_observe", lambda *args: (_ for _ in ()).throw(ValueError("metrics broke")))
    with pytest.raises(RuntimeError, match="internal batcher error"):
        batcher.submit("m", scorer, pairs(1)).result(5)
    monkeypatch.undo()
    assert batcher.submit("m", scorer, pairs(2)).result(5).tolist() == [2]


class AllocatingScorer(GatedScorer):
    """Like a model on a GPU: each pass allocates activations, and a pass with POISON runs out of memory. Records, at
    every call, whether the memory of the passes before it was already freed."""

    def __init__(self) -> None:
        super().__init__(torch.OutOfMemoryError)
        self.activations: list[weakref.ref[torch.Tensor]] = []
        self.freed_at_call: list[bool] = []

    def forward(self, encoded: EncodedPairs) -> torch.Tensor:
        self.freed_at_call.append(all(ref() is None for ref in self.activations))
        activations = torch.ones(512, 1024)  # what a forward holds in its frames when it fails
        self.activations.append(weakref.ref(activations))
        return super().forward(encoded) + activations[0, 0] * 0


def test_a_failed_pass_frees_its_memory_before_the_retry_and_after_the_request() -> None:
    batcher = ContinuousBatcher(max_batch_pairs=64, max_queue_pairs=64)
    scorer = AllocatingScorer()
    busy = hold_model(batcher, scorer)
    requests = [batcher.submit("m", scorer, pairs(i)) for i in (1, 2, POISON)]
    scorer.gate.set()
    busy.result(5)
    assert [f.result(5).tolist() for f in requests[:2]] == [[1], [2]]
    with pytest.raises(torch.OutOfMemoryError) as failed:
        requests[2].result(5)
    batcher.close(timeout=10)
    assert scorer.freed_at_call[1:] == [True] * (len(scorer.freed_at_call) - 1), scorer.freed_at_call
    # The exception handed to the failed request keeps no frames (and so no activations) alive.
    assert failed.value.__traceback__ is None or all(ref() is None for ref in scorer.activations)
    gc.collect()
    assert all(ref() is None for ref in scorer.activations)


def test_cancelled_work_leaves_the_queue_count_at_once() -> None:
    batcher = ContinuousBatcher(max_batch_pairs=256, max_queue_pairs=8192)
    scorer = GatedScorer()
    busy = hold_model(batcher, scorer)
    big = batcher.submit("m", scorer, pairs(*range(8000)))
    assert batcher.queued_pairs == 8000
    assert big.cancel()
    assert batcher.queued_pairs == 0, "a cancelled request must not keep its place in the queue bound"
    after = batcher.submit("m", scorer, pairs(*range(500)))  # would be refused if the 8,000 still counted
    scorer.gate.set()
    busy.result(5)
    assert after.result(5).tolist() == list(range(500))
    assert all(len(call) <= 256 for call in scorer.calls), "a request is scored in pieces of max_batch_pairs"
    batcher.close(timeout=10)


def test_the_model_stays_pinned_until_the_model_thread_is_done_with_a_cancelled_request() -> None:
    batcher = ContinuousBatcher(max_batch_pairs=2, max_queue_pairs=64)
    scorer = GatedScorer()
    finished = threading.Event()
    scorer.gate.clear()
    request = batcher.submit("m", scorer, pairs(1, 2, 3, 4), on_finished=finished.set)
    assert scorer.started.wait(5)  # its first piece is on the model
    assert request.cancel()  # the caller gives up: the second piece is dropped
    assert not finished.is_set(), "the running piece still uses the scorer"
    scorer.gate.set()
    assert finished.wait(5)
    assert scorer.calls == [[1, 2]]
    batcher.close(timeout=10)
