"""Session-wide test setup: 8 fake CPU devices, quiet TensorFlow, no network.

XLA_FLAGS must be set before JAX initialises its backend, so it is set here at
import time (pytest imports conftest before any test module). Tests that need
a specific device count or several processes start subprocesses instead.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# Never reach the network from tests: Hugging Face Hub calls must use loopback
# servers or the local cache that a test prepares.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
