"""The one rendering pool: a function over jobs in worker processes, results in job order."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

from tqdm import tqdm


def render_pool(fn: Callable, jobs: list, workers: int = 2, desc: str = "render",
                progress: bool = True) -> Iterator:
    """Yield ``fn(job)`` for each job, in order: in ``workers`` processes (1: in this one),
    with a progress bar. ``fn`` must be a module-level function (it is pickled)."""
    with tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress) as bar:
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                for result in pool.map(fn, jobs, chunksize=16):
                    bar.update()
                    yield result
        else:
            for job in jobs:
                yield fn(job)
                bar.update()
