"""The pieces every recipe shares that need no model: the non-finite streak that stops a diverged run, the run
directory's lock and the config it records."""

import os
import subprocess
import sys

import pytest

from vidpost.config import save_config
from vidpost.errors import VidpostError
from vidpost.recipes.common import LOCK_NAME, NonfiniteStreak, lock_run_dir, prepare_run_dir
from vidpost.recipes.sft import SFTConfig


def test_one_bad_step_is_forgotten_and_a_streak_of_them_stops_the_run(tmp_path):
    streak = NonfiniteStreak(3, tmp_path / "checkpoints")
    for step, finite in enumerate([False, False, True, False, False], start=1):
        streak.record(step, finite)  # two bad, one good (the count restarts), two bad: still under 3
    assert streak.length == 2
    with pytest.raises(VidpostError, match=r"^step 6: 3 steps in a row .*no checkpoint was written before them;"):
        streak.record(6, False)


def test_a_run_directory_is_held_by_one_live_process(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(str(other.pid))
        with pytest.raises(VidpostError, match=rf"in use by process {other.pid} \(lock file"):
            lock_run_dir(tmp_path)
    finally:
        other.kill()
        other.wait()
    lock_run_dir(tmp_path)  # its process is gone: the stale lock is taken over
    assert (tmp_path / LOCK_NAME).read_text() == str(os.getpid())
    lock_run_dir(tmp_path)  # and this process may take its own run up again


def test_a_run_recorded_with_a_renamed_key_names_the_new_key_and_resumes_once_it_is_corrected(tmp_path):
    cfg = SFTConfig()
    save_config(cfg, tmp_path / "config.yaml")
    saved = (tmp_path / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(saved.replace("log:\n  every_steps: 10\n", "log_every_steps: 10\n"))
    with pytest.raises(VidpostError) as info:
        prepare_run_dir(cfg, tmp_path)
    assert "\n" not in str(info.value)
    assert "'log_every_steps' is now called 'log.every_steps'); correct " in str(info.value)
    (tmp_path / "config.yaml").write_text(saved)
    prepare_run_dir(cfg, tmp_path)
