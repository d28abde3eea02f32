"""The lock of an output folder, temp files that carry their writer's pid, and reads that
never block: the storage half of issue 10 (items 1, 3 and the FIFO that would hang)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import PROJECT_ROOT

from pipeline.storage.files import (
    HOLDER_NAME,
    FolderBusy,
    folder_lock,
    read_stamped,
    remove_temp_files,
    replace_bytes,
    temp_name,
    write_json,
    write_text,
)

HOLD = """
import sys, time
from pipeline.storage.files import folder_lock
with folder_lock([sys.argv[1]], "convert"):
    print("held", flush=True)
    time.sleep(600)
"""


def hold(folder: Path) -> subprocess.Popen[str]:
    """Another process holding the lock of `folder` (until it is killed)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], text=True,
                               stdout=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    return process


def test_a_held_folder_refuses_a_second_run_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    holder = hold(out)
    try:
        with pytest.raises(FolderBusy) as refused, folder_lock([out], "convert"):
            pytest.fail("the lock was taken twice")
        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith(f"convert: {out} is in use by another run (pid {holder.pid} "
                                  f"on {socket.gethostname()}, `-c ")
        assert "since 20" in message and message.endswith("then run again")
        assert FolderBusy.exit_code == 2
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    holder = hold(out)
    assert json.loads((out / HOLDER_NAME).read_text())["pid"] == holder.pid
    holder.send_signal(signal.SIGKILL)  # no clean-up runs: the OS drops the lock
    holder.wait()
    with folder_lock([out], "convert"):
        assert json.loads((out / HOLDER_NAME).read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in out.iterdir()) == []  # nothing left among the outputs


def test_one_process_may_lock_several_folders_and_reenter_after_release(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    with folder_lock([a, b, a / "."], "train"):
        assert (a / HOLDER_NAME).is_file() and (b / HOLDER_NAME).is_file()
    with folder_lock([b], "train"):
        pass
    assert list(a.iterdir()) == [] and list(b.iterdir()) == []


def test_temp_names_fit_a_255_byte_target_and_carry_the_pid(tmp_path: Path) -> None:
    name = "é" * 125 + ".png"  # 254 bytes in UTF-8
    tmp = temp_name(name)
    assert len(os.fsencode(tmp)) <= 255
    assert tmp.startswith(".") and tmp.endswith(".tmp") and f".{os.getpid()}-" in tmp
    replace_bytes(tmp_path / name, b"whole")  # the temp file beside it can be created
    assert [p.name for p in tmp_path.iterdir()] == [name]
    raw = os.fsdecode(b"x" * 250 + b"\xff.png")  # not UTF-8, 255 bytes, as os.walk names it
    replace_bytes(tmp_path / raw, b"bytes")
    assert (tmp_path / raw).read_bytes() == b"bytes"


def test_shared_folders_lose_only_the_temp_files_of_dead_writers(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)  # exited: no process has this pid now (reused only rarely)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        names = {f".split.json.{dead_pid}-0123456789ab.tmp": "dead writer",
                 f".metrics.json.{live.pid}-0123456789ab.tmp": "live writer",
                 f".data.json.{os.getpid()}-0123456789ab.tmp": "this process",
                 ".old.json.k3j2.tmp": "no pid (an older version)"}
        for name in names:
            (tmp_path / name).write_bytes(b"half")
        assert remove_temp_files(tmp_path, shared=True) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(names) - {
            f".split.json.{dead_pid}-0123456789ab.tmp"})
        assert remove_temp_files(tmp_path) == 3  # under the folder's lock: every one
    finally:
        live.kill()
        live.wait()


def test_reading_a_fifo_fails_at_once_instead_of_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "a.json"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(OSError, match="not a regular file"):
        read_stamped(fifo)
    assert time.monotonic() - start < 5  # a blocking open would wait here forever
    with pytest.raises(IsADirectoryError):
        read_stamped(tmp_path)


def test_text_with_lone_surrogates_is_written_escaped_not_crashing(tmp_path: Path) -> None:
    name = os.fsdecode(b"bad\xff.json")  # what os.walk gives for a non-UTF-8 name
    write_json(tmp_path / "v.json", [{"file": name}])
    assert json.loads((tmp_path / "v.json").read_text(encoding="utf-8")) == [{"file": name}]
    write_text(tmp_path / "v.md", f"### `{name}`\n")
    assert (tmp_path / "v.md").read_text(encoding="utf-8") == "### `bad\\udcff.json`\n"
