"""Root conftest: the end-to-end harness is a plugin (fixtures `netlab` and `chain`, failure logs); hypothesis
profiles: the default stays quick for CI, `--hypothesis-profile=fuzz` (`make fuzz`) tries far more inputs."""

import pytest
from hypothesis import HealthCheck, settings

pytest.register_assert_rewrite("tests.e2e.relay")

pytest_plugins = ["tests.e2e.netns"]

settings.register_profile(
    "fuzz",
    max_examples=5_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
