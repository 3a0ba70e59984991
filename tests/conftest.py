"""Shared test set-up: 8 host CPU devices (for mesh tests) and an opt-in float64 fixture."""

import os

# Must happen before jax initialises its backends.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Run the test body with float64 as the default float type."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def mesh8():
    """A 1-D mesh over 8 host CPU devices with axis name ``data``."""
    devices = jax.devices()
    if len(devices) < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    return jax.make_mesh((8,), ("data",), devices=devices[:8])
