"""Doctor's active tests run for real: a gloo all-reduce across 2 spawned CPU processes, checked and timed."""

from __future__ import annotations

import sys
import time

import pytest

from llamakit.doctor import rules as R
from llamakit.doctor.active import allreduce_plan, finish_probe, run_allreduce, start_probe
from llamakit.doctor.facts import Facts, gather

pytestmark = pytest.mark.slow


def test_gloo_allreduce_two_processes_is_correct_and_reports_bus_bandwidth():
    r = run_allreduce("gloo", 2, timeout=60, nbytes=4 << 20, iters=3)
    assert r.ok, r.error
    assert r.world == 2 and r.backend == "gloo" and r.bytes == 4 << 20
    assert r.busbw_gbps and r.busbw_gbps > 0
    assert abs(r.busbw_gbps - r.algbw_gbps * 2 * (2 - 1) / 2) < 1e-9  # busbw = 2(n-1)/n x algbw
    row = R.rule_allreduce(Facts(allreduce=r, active_run=["allreduce"]))
    assert row.status == "ok" and "2 CPU processes correct" in row.finding


def test_probe_that_hangs_is_killed_at_the_timeout():
    started = time.monotonic()
    proc = start_probe(["allreduce", "--backend", "gloo", "--world", "2", "--port", "1", "--iters", "1"])
    run = finish_probe(proc, 0.5, started)  # port 1 is not ours to bind: it errors or hangs; either way no result
    assert run.seconds < 30
    assert run.timed_out or (run.result is not None and not run.result["ok"])
    assert proc.poll() is not None


def test_facts_on_this_machine_pick_gloo_without_gpus():
    f = gather()
    assert f.python_version == ".".join(map(str, sys.version_info[:3]))
    if not f.gpus:
        assert allreduce_plan(f) == ("gloo", 2)
        assert R.rule_gpus(f).status == "skip"
