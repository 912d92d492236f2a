"""Durations of the write path's stages as Ray 2.60 can export them exactly.

Ray's exported histogram ``_sum`` is not the sum of what was observed: it is rebuilt from the
bucket counts at the buckets' midpoints. Four observations of 0.0123, 0.0456, 0.0789 and 0.5 s,
five times over, exported ``_sum`` 3.575 where they add up to 3.184; a Counter incremented by the
same values exported 3.184. A mean from ``_sum / _count`` is therefore the buckets' mean, not the
measurement's. So each duration here is a Histogram (its buckets give quantiles and its ``_count``
the number observed) and a Counter of its seconds (the exact total): the mean is the Counter's
rate over the Histogram count's rate.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Histogram

# Histogram buckets (seconds): a lone edit's steps take 1.6-18 ms, a pass at 32 writing clients
# 63 ms and a request's wait for its encoding there 90 ms (means; README "Measured", session 16).
STAGE_SECONDS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2.5]


class Durations:
    """``<name>_seconds`` (Histogram) and ``<name>_time_seconds`` (Counter, exported with Ray's
    ``_total`` suffix), observed together."""

    def __init__(self, name: str, description: str, tag_keys: tuple[str, ...]):
        self.histogram = Histogram(
            f"{name}_seconds", description=description, boundaries=STAGE_SECONDS, tag_keys=tag_keys
        )
        self.seconds = Counter(f"{name}_time_seconds", description=f"{description}: seconds in all", tag_keys=tag_keys)

    def observe(self, seconds: float, tags: dict[str, str]) -> None:
        self.histogram.observe(seconds, tags=tags)
        if seconds > 0:  # a Counter takes positive increments only
            self.seconds.inc(seconds, tags=tags)
