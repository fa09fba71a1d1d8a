"""The dev chain's state file: saved periodically, so a node killed with SIGKILL keeps what it
had at its last save, and never left unloadable by a save cut short.

Real Anvil processes throughout (scripts/anvil.py and AnvilNode) on free ports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gridpoints_dev.anvil import AnvilNode, rpc_request

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def saved_block(state: Path) -> int | None:
    """The head block a whole state file holds (None: missing or not whole)."""
    try:
        number = json.loads(state.read_bytes())["best_block_number"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(number, 0) if isinstance(number, str) else int(number)


def start_cli(state: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [
            PYTHON,
            str(ROOT / "scripts" / "anvil.py"),
            "--port",
            "0",
            "--json",
            "--state",
            str(state),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    return proc, json.loads(line)


def test_a_node_killed_with_sigkill_restarts_from_its_last_periodic_save(tmp_path: Path) -> None:
    state = tmp_path / "chain" / "state.json"
    proc, info = start_cli(state)
    try:
        rpc_request(info["rpc_url"], "anvil_mine", ["0x7"])
        # The default interval is 5 s: the save reaches the state file within about that.
        deadline = time.monotonic() + 15
        while (saved_block(state) or 0) < 7:
            assert time.monotonic() < deadline, "the state was never saved while Anvil ran"
            time.sleep(0.2)
        os.kill(info["pid"], signal.SIGKILL)  # no chance to save on the way out
        assert proc.wait(timeout=20) == 1  # the launcher reports the node's death
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    again, info = start_cli(state)
    try:
        assert int(str(rpc_request(info["rpc_url"], "eth_blockNumber")), 16) >= 7
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=20) == 0
    finally:
        if again.poll() is None:
            again.kill()
            again.wait()


def whole_state_after_mining(state: Path, blocks: int) -> bytes:
    with AnvilNode(state_path=state) as node:
        rpc_request(node.rpc_url, "anvil_mine", [hex(blocks)])
    assert saved_block(state) == blocks
    return state.read_bytes()


def test_a_state_file_cut_short_is_set_aside_and_the_last_whole_dump_loaded(
    tmp_path: Path,
) -> None:
    """Anvil truncates its dump file and writes it again, so a kill mid-save leaves a prefix of
    a state. The kill cannot be timed to land mid-write, so the test writes that prefix itself
    (over the state file, as Anvil did when it was given the state file to write)."""
    state = tmp_path / "state.json"
    whole = whole_state_after_mining(state, 4)
    torn = whole[: len(whole) // 2]
    state.write_bytes(torn)
    with AnvilNode(state_path=state) as node:
        assert int(str(rpc_request(node.rpc_url, "eth_blockNumber")), 16) == 4
        [aside] = list(tmp_path.glob("state.json.torn-*"))
        assert aside.read_bytes() == torn
        assert any(str(aside) in message for message in node.state_messages)
    assert saved_block(state) == 4  # whole again after the clean stop


def test_a_torn_state_file_with_no_whole_copy_left_starts_an_empty_chain(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    whole = whole_state_after_mining(state, 3)
    for leftover in tmp_path.glob("state.json.*"):  # no working dump to fall back to
        leftover.unlink()
    state.write_bytes(whole[:100])
    with AnvilNode(state_path=state) as node:
        assert rpc_request(node.rpc_url, "eth_blockNumber") == "0x0"
        assert node.state_messages[-1] == "no loadable state left: the chain starts empty"
    assert len(list(tmp_path.glob("state.json.torn-*"))) == 1
