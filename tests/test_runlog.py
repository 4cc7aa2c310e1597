"""runlog.py: the resumable CSV log, the environment record, the code version."""
import importlib.metadata
import platform

import runlog


def test_csv_log_resume_drops_rows_from_the_resume_step(tmp_path):
    log = runlog.CSVLog(tmp_path / "log.csv", ["step", "loss"])
    for step in range(5):
        log.write({"step": step, "loss": 1.0 / (step + 1)})
    runlog.CSVLog(tmp_path / "log.csv", ["step", "loss"], resume_step=3).write({"step": 3, "loss": 0.0})
    lines = (tmp_path / "log.csv").read_text().split()
    assert lines == ["step,loss", "0,1", "1,0.5", "2,0.333333", "3,0"]


def test_environment_record_pins_the_installed_versions_and_a_resume_under_others_adds_one(tmp_path, monkeypatch):
    runlog.record_environment(tmp_path, 0)
    lines = (tmp_path / "environment.txt").read_text().splitlines()
    assert lines[0] == f"# python {platform.python_version()} on {platform.platform()}"
    pins = dict(line.split("==") for line in lines[2:])
    for name in ("torch", "torchaudio", "numpy", "scipy", "pandas", "pyyaml"):
        assert pins[name] == importlib.metadata.version(name)
    assert list(pins) == sorted(pins)
    runlog.record_environment(tmp_path, 3)  # a resume under the same versions: nothing new
    monkeypatch.setattr(runlog, "environment_installed", lambda: "numpy==0.0.1\n")
    runlog.record_environment(tmp_path, 6)
    assert (tmp_path / "environment.txt").read_text().splitlines() == lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["environment.txt", "environment_step6.txt"]
    assert (tmp_path / "environment_step6.txt").read_text() == "numpy==0.0.1\n"


def test_git_commit_names_this_checkout():
    commit = runlog.git_commit()
    assert commit == "unknown" or (len(commit.removesuffix("+dirty")) == 12 and
                                   int(commit.removesuffix("+dirty"), 16) >= 0)
