"""Run a script in a fresh process that sees several host (CPU) devices, and read the JSON it prints last."""

import json
import os
import subprocess
import sys


def on_host_devices(script: str, count: int = 8) -> dict:
    """`script` run by a new Python with `count` host devices (`--xla_force_host_platform_device_count`); its last
    line of output, parsed as JSON. Fails the calling test with the script's error output when it fails."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}", JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
