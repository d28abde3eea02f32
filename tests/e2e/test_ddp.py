"""DDP: `segpipe train` under torchrun with 2 gloo processes on the CPU.

What is exactly checkable (and checked):
- the 2 processes end with bit-identical weights and BatchNorm buffers (the run itself
  all-gathers a hash of its state and fails otherwise; we read its report line), and
- the parameters equal, bit for bit, those of ONE process with grad_accum=2 and the same
  per-process batch: both compute the same micro-batches (process r / micro-batch m take the
  same samples and augmentations), average the same two gradients ((g0 + g1) / 2 is exact in
  floating point either way) and take the same AdamW steps.
Both for the raw weights and their EMA (which the model file holds). Not compared: the
BatchNorm running statistics and counters, which DDP keeps per process (rank 0's are kept at
each validation) while one process updates them with both micro-batches.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from helpers.learn import make_dataset, tiny_params

from pipeline.learn.train import train
from pipeline.params import parse_params

STATS = ("running_mean", "running_var", "num_batches_tracked")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_match_one_process_with_grad_accum(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=12, n_val=3)
    common = {"steps": 4, "val_every": 2, "batch_size": 2, "threads": 1, "jitter": 0.1}
    ddp = tiny_params(tmp_path, model_path="ddp/model.pt", checkpoint_path="ddp/ckpt.pt",
                      log_dir="ddp/logs", plan_path="ddp/plan.json", **common)
    params_file = tmp_path / "ddp.yaml"
    params_file.write_text(yaml.safe_dump(ddp))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--nnodes", "1", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "-m", "pipeline", "train", "--params", str(params_file)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          check=False, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    agree = re.search(r"all 2 processes hold the same weights \(([0-9a-f]{32})\)", done.stderr)
    assert agree, done.stderr[-3000:]
    assert "2 process(es)" in done.stderr and "global batch 4" in done.stderr
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["ckpt.pt", "logs",
                                                                     "model.pt", "plan.json"]

    single = train(parse_params(tiny_params(
        tmp_path, model_path="one/model.pt", checkpoint_path="one/ckpt.pt", log_dir="one/logs",
        plan_path="one/plan.json", grad_accum=2, **common)), progress=False)
    assert single.steps_done == 4

    ddp_ckpt = torch.load(tmp_path / "ddp" / "ckpt.pt", weights_only=True)
    one_ckpt = torch.load(tmp_path / "one" / "ckpt.pt", weights_only=True)
    assert ddp_ckpt["step"] == 4
    for ddp_state, one_state in ((ddp_ckpt["model"]["state_dict"], one_ckpt["model"]["state_dict"]),
                                 (ddp_ckpt["ema"], one_ckpt["ema"])):
        assert list(ddp_state) == list(one_state)
        compared = 0
        for name, value in ddp_state.items():
            if name.endswith(STATS):
                continue
            assert torch.equal(value, one_state[name]), name
            compared += 1
        assert compared == 10 + 2 * 10 + 2  # 10 convs, their BatchNorms' weight + bias, OutConv
