"""Shared test configuration.

Hypothesis profiles (select with NOETHER_HYPOTHESIS_PROFILE, default "ci" when the CI
environment variable is set, else "dev"):

* ``ci``   derandomised, no example database, no deadline, bounded example counts so
           the whole suite stays within a few minutes on 2 cores;
* ``dev``  more examples, randomised;
* ``fuzz`` many more examples, for long local runs.
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True)
settings.register_profile(
    "dev", deadline=None, max_examples=60,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "fuzz", deadline=None, max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_default = "ci" if os.environ.get("CI") else "dev"
settings.load_profile(os.environ.get("NOETHER_HYPOTHESIS_PROFILE", _default))
