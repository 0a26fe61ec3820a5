"""TokenBucket: rate, burst, refill by the injected clock, refund and reconfiguration."""

from __future__ import annotations

from spiderflow.scheduler.token_bucket import TokenBucket


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_starts_full_and_grants_up_to_burst():
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=5, clock=clock)
    assert bucket.available() == 5
    assert bucket.take(10) == 5
    assert bucket.take(1) == 0


def test_refills_at_rate_and_caps_at_burst():
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=5, clock=clock)
    bucket.take(5)
    clock.t += 1.0
    assert bucket.take(10) == 2
    clock.t += 0.25
    assert bucket.take(1) == 0          # half a token is not a token
    clock.t += 0.25
    assert bucket.take(1) == 1
    clock.t += 3600
    assert bucket.available() == 5


def test_fractional_rate_accumulates():
    clock = Clock()
    bucket = TokenBucket(rate=0.5, burst=1, clock=clock)
    assert bucket.take(1) == 1
    clock.t += 1.0
    assert bucket.take(1) == 0
    clock.t += 1.0
    assert bucket.take(1) == 1


def test_zero_rate_grants_nothing():
    bucket = TokenBucket(rate=0, burst=10, clock=Clock())
    assert bucket.available() == 0
    assert bucket.take(3) == 0


def test_burst_below_one_is_one():
    bucket = TokenBucket(rate=1, burst=0, clock=Clock())
    assert bucket.take(5) == 1


def test_refund_and_configure():
    clock = Clock()
    bucket = TokenBucket(rate=1, burst=10, clock=clock)
    assert bucket.take(10) == 10
    bucket.refund(3)
    assert bucket.take(10) == 3
    clock.t += 4
    bucket.configure(rate=100, burst=2)  # tokens earned so far are capped at the new burst
    assert bucket.take(10) == 2
    clock.t += 0.015
    assert bucket.take(10) == 1


def test_clock_going_back_does_not_mint_tokens():
    clock = Clock()
    bucket = TokenBucket(rate=1, burst=3, clock=clock)
    bucket.take(3)
    clock.t -= 100
    assert bucket.take(1) == 0
    clock.t += 1
    assert bucket.take(1) == 1
