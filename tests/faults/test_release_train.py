"""The release-train load run (bench/bench_release_train.py) at small scale, so CI checks its invariants.

Three bot replicas on one Redis, one signer, the Slack emulator; 50 pending requests, approvers clicking at
random with double-clicks and denies, CI cancelling some, over three rounds and a closing round. Afterwards
every request is in exactly one final state, on the record once and agreeing with Redis; receipts equal
approved requests and CI verified each; the audit chain verifies; each process stays within its memory
bound. No timing is asserted (the figures are in docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.bench_release_train import check, cpu_seconds, peak_rss_mib, report, run_train, train_stack

pytestmark = pytest.mark.slow


def test_release_train_of_fifty_requests_keeps_every_invariant(tmp_path: Path) -> None:
    with train_stack(tmp_path) as st:
        try:
            result = asyncio.run(run_train(st, requests=50, rounds=3, seed=13))
            problems = check(st, result)
        except BaseException:
            print("\n".join(f"===== {n} =====\n{p.log()[-20000:]}" for n, p in st.procs.items()))
            raise
        print(report(result, peak_rss_mib(st)), cpu_seconds(st))
    assert len(result.requests) == 50
    assert {r.status for r in result.requests} >= {"APPROVED"}
    assert not problems, problems
