"""The cohort job's command line: --help from the declared options, and refused options."""
import subprocess
import sys

from pipeline import cohorts as job
from pipeline.cohort_options import option_actions


def test_help_lists_every_option_with_its_default_and_what_requires_it():
    done = subprocess.run([sys.executable, "-m", "pipeline.cohorts", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for action, _ in option_actions():
        assert action.option_strings[0] in text
    assert "--lease_minutes LEASE_MINUTES How long a batch run holds its sync's lease; a run that died frees it " \
           "after this. Default: 360." in text
    assert "The cohorts file (YAML or JSON), a local path or gs:// URI. Required (batch and streaming)." in text
    assert "Required (streaming)." in text and "subscription to the topic of Amplitude's Pub/Sub cohort feed" in text
    assert "--allow_mass_removal [true|false]" in text


def test_bad_options_say_what_to_pass(tmp_path, capsys):
    assert job.run(["--state_dir", str(tmp_path), "--config", "c.yaml", "--input_subscription", "subs",
                    "--dead_letter_topic", "projects/p/topics/t", "--flush_seconds", "90"]) == 2
    err = capsys.readouterr().err
    assert "--input_subscription must look like projects/P/subscriptions/S, got 'subs'" in err
    assert "--flush_seconds must be > 0 and <= 60" in err
    assert job.run(["--state_dir", str(tmp_path), "--config", "c.yaml", "--sync", "s", "--allow_empty=maybe"]) == 2


def test_an_unknown_option_is_refused_with_the_closest_name_before_anything_starts(tmp_path, capsys):
    # As a user runs it: the exit code and the words on stderr are what matters.
    done = subprocess.run([sys.executable, "-m", "pipeline.cohorts", "--config", "c.yaml", "--sync", "s",
                           f"--state_dir={tmp_path}", "--alow_empty"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "python -m pipeline.cohorts: unknown option --alow_empty (did you mean --allow_empty?)" in done.stderr
    assert "`python -m pipeline.cohorts --help` lists its options" in done.stderr
    assert "file not found" not in done.stderr  # refused before the cohorts file was read
    assert list(tmp_path.iterdir()) == []  # nothing was started or written

    # The streaming job's options that this job does not share are unknown here, and Beam's own are fine.
    assert job.run(["--config", "c.yaml", "--sync", "s", f"--state_dir={tmp_path}", "--sync_config=s.yaml",
                    "--braze_max_attemps=2"]) == 2
    err = capsys.readouterr().err
    assert "unknown option --sync_config (did you mean --config?)" in err
    assert "unknown option --braze_max_attemps (did you mean --braze_max_attempts?)" in err
    assert job.run(["--config", str(tmp_path / "absent.yaml"), "--sync", "s", f"--state_dir={tmp_path}",
                    "--runner=DirectRunner", "--project=p"]) == 2
    assert "file not found" in capsys.readouterr().err  # got past the command line to the file
