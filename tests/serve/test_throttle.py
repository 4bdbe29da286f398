"""Login back-off per user name and per address (:mod:`medseg.serve.throttle`)."""

from __future__ import annotations

from medseg.serve.throttle import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_name_waits_twice_as_long_after_each_failure_and_success_clears_it():
    clock = Clock()
    throttle = LoginThrottle(free_per_user=3, clock=clock)
    for _ in range(3):
        assert throttle.begin("anna", "10.0.0.1") == 0.0  # counted as failures (never succeeded)
    assert throttle.begin("anna", "10.0.0.2") == 1.0  # from any address, right password or not
    assert throttle.begin("ANNA ", "10.0.0.3") == 1.0  # the same name however it is spelled
    clock.now += 1.0
    assert throttle.begin("anna", "10.0.0.1") == 0.0
    assert throttle.begin("anna", "10.0.0.1") == 2.0
    clock.now += 2.0
    assert throttle.begin("anna", "10.0.0.1") == 0.0
    throttle.succeeded("anna", "10.0.0.1")
    assert throttle.begin("anna", "10.0.0.1") == 0.0


def test_unknown_names_are_throttled_alike_and_parallel_guesses_do_not_slip_through():
    clock = Clock()
    throttle = LoginThrottle(free_per_user=5, clock=clock)
    # ten guesses started at once (none finished): five may run, the rest wait
    started = [throttle.begin("nobody", "10.0.0.9") for _ in range(10)]
    assert started.count(0.0) == 5 and all(w > 0 for w in started[5:])


def test_an_address_guessing_many_names_waits_too_and_waits_are_capped():
    clock = Clock()
    throttle = LoginThrottle(free_per_user=100, free_per_address=4, cap=60.0, clock=clock)
    for i in range(4):
        assert throttle.begin(f"user{i}", "10.0.0.7") == 0.0
    assert throttle.begin("someone-else", "10.0.0.7") == 1.0
    assert throttle.begin("someone-else", "10.0.0.8") == 0.0  # another address is not held back
    for _ in range(30):
        clock.now += throttle.begin("x", "10.0.0.7") + 0.001
    assert throttle.begin("x", "10.0.0.7") <= 60.0


def test_memory_is_bounded_and_old_counts_are_forgotten():
    clock = Clock()
    throttle = LoginThrottle(max_keys=100, forget=10.0, clock=clock)
    for i in range(1000):
        throttle.begin(f"name{i}", f"10.0.{i // 256}.{i % 256}")
    assert len(throttle._counts) <= 100
    clock.now += 11.0
    assert throttle.begin("name999", "10.0.3.231") == 0.0
