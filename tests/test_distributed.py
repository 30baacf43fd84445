"""Many hosts (issue 29): calibration rows spread over two processes (`jax.distributed` on 127.0.0.1, CPU) give every
compressor the same result as one process holding them all."""

import json
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("_distributed_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration  # three fresh processes, each compiling every compressor: the second test step
def test_two_processes_give_the_results_of_one(tmp_path):
    port = _free_port()
    outs = [tmp_path / f"out{i}.json" for i in range(3)]
    runs = [subprocess.Popen([sys.executable, str(WORKER), "0", "1", "0", str(outs[0])])]
    runs += [subprocess.Popen([sys.executable, str(WORKER), str(i), "2", str(port), str(outs[i + 1])]) for i in (0, 1)]
    assert [run.wait(timeout=1200) for run in runs] == [0, 0, 0]
    one, *two = (json.loads(p.read_text()) for p in outs)
    assert len(one) > 20 and two[0].keys() == two[1].keys() == one.keys()
    for name, reference in one.items():
        for got in two:
            if isinstance(reference, str):
                assert got[name] == reference, name
            else:
                np.testing.assert_allclose(got[name], reference, rtol=1e-9, atol=1e-12, err_msg=name)
