"""Root conftest: the end-to-end harness is a plugin (fixtures `netlab` and `chain`, failure logs)."""

import pytest

pytest.register_assert_rewrite("tests.e2e.relay")

pytest_plugins = ["tests.e2e.netns"]
