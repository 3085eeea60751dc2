"""Ordered prefetch: batches are prepared (read, decoded, resized) on worker threads up to `depth` ahead of
the consumer, and handed over strictly in order, so that values never depend on the prefetch setting."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def prefetched(jobs: Sequence[Callable[[], T]], depth: int, workers: int = 1) -> Iterator[T]:
    """Each job's result in order; depth 0 runs every job on the caller's thread when it is consumed.

    An exception of a job is raised where its result is consumed; jobs not yet started are cancelled
    when the consumer stops early.
    """
    if depth <= 0:
        for job in jobs:
            yield job()
        return
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="nsdbench-prefetch")
    pending: deque[Future[T]] = deque()
    it = iter(jobs)
    try:
        for job in it:
            pending.append(pool.submit(job))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
