"""The SLURM tests' cluster (tests/conftest.py: slurm_cluster_for_tests), with the cluster's script and
`sinfo` replaced by fakes: the tests stop what they start, and only that."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import tests.conftest as harness


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Fake cluster: `answers` (sinfo works), `own` (daemons of SLURM_STATE alive), `fail_start`;
    `calls` records the script commands in order."""
    state = {"answers": False, "own": False, "fail_start": False, "calls": []}

    def script(command: str) -> None:
        state["calls"].append(command)
        if command == "start":
            if state["fail_start"]:
                raise subprocess.CalledProcessError(1, ["slurm_cluster.sh", "start"])
            state["answers"] = state["own"] = True
        elif command == "stop":
            state["answers"] = state["own"] = False

    monkeypatch.setattr(harness, "slurm_script", script)
    monkeypatch.setattr(harness, "slurm_answers", lambda: state["answers"])
    monkeypatch.setattr(harness, "own_slurm_alive", lambda: state["own"])
    monkeypatch.delenv("SLURM_CONF", raising=False)
    return state


def test_a_cluster_the_tests_start_is_stopped_and_slurm_conf_restored(fake: dict) -> None:
    with harness.slurm_cluster_for_tests():
        assert fake["calls"] == ["start"] and fake["answers"]
        assert os.environ["SLURM_CONF"] == str(harness.SLURM_STATE / "slurm.conf")
    assert fake["calls"] == ["start", "stop"]
    assert "SLURM_CONF" not in os.environ
    assert signal.getsignal(signal.SIGTERM) is not harness._interrupt


def test_the_callers_cluster_is_used_and_left_running(fake: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_CONF", "/tmp/distill-slurm/slurm.conf")  # what .ci/run exports
    fake["answers"] = True
    with harness.slurm_cluster_for_tests():
        pass
    assert fake["calls"] == []
    assert os.environ["SLURM_CONF"] == "/tmp/distill-slurm/slurm.conf"


def test_another_cluster_of_the_machine_is_left_running(fake: dict) -> None:
    fake["answers"] = True  # answers through /etc/slurm/slurm.conf, and is not the tests' own
    with harness.slurm_cluster_for_tests():
        pass
    assert fake["calls"] == []


def test_a_cluster_an_earlier_session_left_running_is_taken_over_and_stopped(fake: dict) -> None:
    fake["answers"] = fake["own"] = True
    with harness.slurm_cluster_for_tests():
        pass
    assert fake["calls"] == ["start", "stop"]


def test_a_stale_slurm_conf_of_the_caller_gets_the_tests_own_cluster(fake: dict, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_CONF", "/gone/slurm.conf")  # set, but nothing answers
    with harness.slurm_cluster_for_tests():
        assert os.environ["SLURM_CONF"] == str(harness.SLURM_STATE / "slurm.conf")
    assert fake["calls"] == ["start", "stop"]
    assert os.environ["SLURM_CONF"] == "/gone/slurm.conf"


def test_a_failing_test_still_stops_the_cluster(fake: dict) -> None:
    with pytest.raises(AssertionError, match="a test failed"):
        with harness.slurm_cluster_for_tests():
            raise AssertionError("a test failed")
    assert fake["calls"] == ["start", "stop"] and not fake["own"]


def test_a_start_that_fails_half_way_is_cleaned_up(fake: dict) -> None:
    fake["fail_start"] = True
    with pytest.raises(subprocess.CalledProcessError):
        with harness.slurm_cluster_for_tests():
            pytest.fail("the block must not run")
    assert fake["calls"] == ["start", "stop"]
    assert "SLURM_CONF" not in os.environ


def test_sigterm_stops_the_run_and_the_cluster(fake: dict) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with harness.slurm_cluster_for_tests():
            assert signal.getsignal(signal.SIGTERM) is harness._interrupt  # else the signal would end pytest
            os.kill(os.getpid(), signal.SIGTERM)  # what `timeout pytest ...` sends
    assert fake["calls"] == ["start", "stop"]
    assert signal.getsignal(signal.SIGTERM) == before


def test_own_daemons_are_found_by_their_pid_files(tmp_path: Path) -> None:
    assert not harness.own_slurm_alive(tmp_path)
    (tmp_path / "slurmd.pid").write_text("not a pid\n")
    assert not harness.own_slurm_alive(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "slurmctld.pid").write_text(f"{dead.pid}\n")
    assert not harness.own_slurm_alive(tmp_path)
    (tmp_path / "slurmctld.pid").write_text(f"{os.getpid()}\n")
    assert harness.own_slurm_alive(tmp_path)
