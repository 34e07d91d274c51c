"""shared.machine: the thread count follows the cores that are idle, and a given count wins."""

import os

import pytest

from shared import machine


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    machine.default_threads.cache_clear()
    yield
    machine.default_threads.cache_clear()


def test_cpu_times_reads_the_aggregate_line_of_proc_stat():
    # proc(5): user nice system idle iowait irq softirq steal guest guest_nice
    text = "cpu  100 5 50 800 40 1 2 3 0 0\ncpu0 50 2 25 400 20 0 1 1 0 0\n"
    assert machine._cpu_times(text) == (800 + 40, 100 + 5 + 50 + 800 + 40 + 1 + 2 + 3)


@pytest.mark.parametrize("idle, cores, expected", [(2.0, 2, 2), (1.02, 2, 1), (0.1, 2, 1), (3.4, 4, 3), (7.9, 4, 4), (None, 4, 4)])
def test_default_threads_is_the_idle_cores_rounded_at_least_one(monkeypatch, idle, cores, expected):
    monkeypatch.setattr(machine, "idle_cores", lambda: idle)
    monkeypatch.setattr(machine, "usable_cores", lambda: cores)
    assert machine.default_threads() == expected


def test_omp_num_threads_and_a_given_count_win(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(machine, "idle_cores", lambda: 1.0)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert machine.default_threads() == 3
        assert machine.apply_threads(2) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_idle_cores_is_between_zero_and_the_cores():
    idle = machine.idle_cores(0.05)
    assert idle is None or 0 <= idle <= (os.cpu_count() or 1) + 1e-9
