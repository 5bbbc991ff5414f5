"""Archives to JSON lines (``spikeear transcribe DIR_OR_GLOB --out``), in this process and
on a Ray cluster of 2 CPUs that the tests start: the same lines either way, a broken file
reported in its line, a second run skipping what is done, and bad input refused."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import main
from tests.conftest import fixture_path
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[1]
try:
    import ray  # noqa: F401

    HAVE_RAY = True
except ModuleNotFoundError:
    HAVE_RAY = False
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason='Ray is missing: pip install -e ".[cluster]"')


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """Three clips, a fourth in a subfolder, and a .wav file that is not audio."""
    root = tmp_path / "archive"
    (root / "more").mkdir(parents=True)
    for word in ("yes", "no", "stop"):
        shutil.copy(fixture_path(word), root)
    shutil.copy(fixture_path("left"), root / "more")
    (root / "broken.wav").write_text("not audio")
    return root


def results(path: Path) -> dict[str, dict]:
    """A results file's lines by file, each file once, without the one timing figure."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    by_file = {line["file"]: line for line in lines}
    assert len(by_file) == len(lines), "a file has two lines"
    for line in lines:
        line.get("stats", {}).pop("real_time_factor", None)
    return by_file


def json_output(files: list[str], capsys: pytest.CaptureFixture) -> dict[str, dict]:
    """What ``transcribe --json`` prints for ``files``, by file, without the timing."""
    capsys.readouterr()
    assert main(["transcribe", *files, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for line in lines:
        line["stats"].pop("real_time_factor")
    return {line["file"]: line for line in lines}


def spikeear(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The command in a fresh interpreter: Ray's process-wide state stays out of pytest's."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_out_writes_the_json_fields_of_each_file_and_the_error_of_a_broken_one(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    out = tmp_path / "results.jsonl"
    assert main(["transcribe", str(archive), "--out", str(out)]) == 2  # one file failed
    err = capsys.readouterr().err
    assert "1 of 5 files could not be transcribed" in err
    lines = results(out)
    broken = str(archive / "broken.wav")
    assert set(lines[broken]) == {"file", "error"}
    assert "not a readable audio file" in lines[broken]["error"]
    good = sorted(set(lines) - {broken})
    assert len(good) == 4 and str(archive / "more" / "left_0cb74144_nohash_1.wav") in good
    assert {f: lines[f] for f in good} == json_output(good, capsys)


def test_a_second_run_skips_files_already_in_the_output(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    out = tmp_path / "results.jsonl"
    assert main(["transcribe", str(archive / "*.wav"), "--out", str(out)]) == 2
    first = out.read_text()
    assert len(first.splitlines()) == 4  # the subfolder is not in the glob
    capsys.readouterr()
    assert main(["transcribe", str(archive), "--out", str(out)]) == 0  # only new files count
    captured = capsys.readouterr()
    assert "skipping 4 of 5 files already there (1 of them failed" in captured.err
    assert "1 files transcribed, 0 failed, 4 skipped" in captured.out
    assert out.read_text().startswith(first)
    assert len(results(out)) == 5
    assert main(["transcribe", str(archive), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{empty}", "--out", "{out}"], "no audio files in this folder"),
        (["{archive}/*.flac", "--out", "{out}"], "matches no files"),
        (["{archive}/nothing", "--out", "{out}"], "no such file or folder"),
        (["{archive}", "--out", "{notes}"], "line 1 is not a result of spikeear transcribe"),
        (["{archive}", "--out", "{other_json}"], "line 2 is not a result of spikeear transcribe"),
        (["{archive}", "--out", "{wav}"], "not a text file"),
        (["{archive}", "--out", "{empty}"], "is a folder"),
        (["{archive}", "--ray"], "--ray needs --out"),
        (["{archive}", "--out", "{out}", "--workers", "2"], "--workers goes with --ray"),
        (["{archive}", "--out", "{out}", "--ray", "nowhere"], "not a Ray address"),
    ],
)
def test_bad_input_is_refused_in_one_line(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
):
    (tmp_path / "empty").mkdir()
    names = {
        "archive": archive,
        "empty": tmp_path / "empty",
        "out": tmp_path / "results.jsonl",
        "notes": tmp_path / "notes.txt",
        "other_json": tmp_path / "other.jsonl",
        "wav": tmp_path / "clip.wav",
    }
    names["notes"].write_text("some notes\n")
    names["other_json"].write_text('{"file": "a.wav", "text": "yes"}\n{"id": 3}\n')
    shutil.copy(fixture_path("yes"), names["wav"])
    assert main(["transcribe", *(a.format(**names) for a in argv)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not names["out"].exists()
    assert names["notes"].read_text() == "some notes\n"


def test_an_unreadable_folder_is_refused(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    # Tests often run as root, which reads any folder: refuse the listing instead.
    scandir = os.scandir

    def refuse(path):
        if Path(path) == archive / "more":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    out = tmp_path / "results.jsonl"
    assert main(["transcribe", str(archive), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{archive / 'more'}: cannot read this folder (Permission denied)" in err
    assert not out.exists()


def test_ray_missing_names_the_extra(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if not installed
    out = tmp_path / "results.jsonl"
    assert main(["transcribe", str(archive), "--out", str(out), "--ray"]) == 2
    assert 'pip install "spikeear[cluster]"' in capsys.readouterr().err
    assert not out.exists()


@needs_ray
def test_an_unreachable_ray_address_fails_at_once(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    out = tmp_path / "results.jsonl"
    assert main(["transcribe", str(archive), "--out", str(out), "--ray", address]) == 2
    assert f"cannot reach the Ray cluster at {address}" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
@needs_ray
def test_a_local_ray_cluster_writes_the_lines_of_the_in_process_path(archive: Path, tmp_path: Path):
    """``--ray`` without an address: a cluster of 2 CPUs for the job, 2 workers."""
    here, there = tmp_path / "here.jsonl", tmp_path / "there.jsonl"
    assert main(["transcribe", str(archive), "--out", str(here)]) == 2
    job = spikeear("transcribe", str(archive), "--out", str(there), "--ray", "--workers", "2")
    assert job.returncode == 2, job.stderr
    assert "1 of 5 files could not be transcribed" in job.stderr
    assert "Traceback" not in job.stderr
    assert results(there) == results(here)


HEAD = """
import signal, sys, time
import ray
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exits through ray.shutdown
context = ray.init(address="local", num_cpus=2, include_dashboard=False)
print(context.address_info["gcs_address"], flush=True)
while True:
    time.sleep(1)
"""


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A 2-CPU Ray cluster in another process; yields its address."""
    head = subprocess.Popen(
        [sys.executable, "-c", HEAD],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        ready, _, _ = select.select([head.stdout], [], [], 120)
        address = head.stdout.readline().strip() if ready else ""
        if not address:
            pytest.fail("the Ray head did not start")
        yield address
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


@pytest.mark.slow
@needs_ray
def test_a_job_on_a_running_cluster_adds_only_the_files_not_yet_done(
    archive: Path, tmp_path: Path, ray_head: str
):
    out = tmp_path / "results.jsonl"
    assert main(["transcribe", str(archive / "*.wav"), "--out", str(out)]) == 2
    done = results(out)
    token = {"RAY_AUTH_MODE": "token"}  # Ray sends its token to a named address only if told
    job = spikeear("transcribe", str(archive), "--out", str(out), "--ray", ray_head, env=token)
    assert job.returncode == 0, job.stderr
    assert "skipping 4 of 5 files already there" in job.stderr
    assert "1 files transcribed, 0 failed, 4 skipped" in job.stdout
    lines = results(out)
    assert {f: lines[f] for f in done} == done
    (new,) = set(lines) - set(done)
    assert lines[new]["file"].endswith("more/left_0cb74144_nohash_1.wav")
    assert lines[new]["text"] == "left"  # the bundled model, end to end
    too_many = spikeear(
        "transcribe", str(archive), "--out", str(tmp_path / "other.jsonl"), "--ray", ray_head,
        "--workers", "3", env=token,
    )  # fmt: skip
    assert too_many.returncode == 2
    assert "the Ray cluster has 2 CPUs" in too_many.stderr
