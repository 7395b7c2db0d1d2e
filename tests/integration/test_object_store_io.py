"""The object-store IO manager against a local S3-compatible server (moto, over HTTP)
and file://: round trips, errors that name the URL and what is missing, and a writer
killed mid-write leaving no half value."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from coreexec.errors import ConfigError, IOManagerError
from coreexec.instance import Instance
from coreexec.io_managers import OutputKey
from coreexec.object_store_io import ObjectStoreIOManager, io_manager_from_url
from coreexec.settings import Settings
from tests.support.fleet_fixtures import S3_SECRET_KEY, S3Server
from tests.support.processes import REPO_ROOT, child_env, pid_alive
from tests.support.waiting import wait_until

KEY = OutputKey("run1", "step", "result")


@pytest.fixture(params=["file", "s3"])
def io_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path / 'outputs'}"
    url: str = request.getfixturevalue("s3_env")
    return url


def test_outputs_round_trip_and_are_found_by_another_process(io_url: str) -> None:
    manager = io_manager_from_url(io_url)
    assert not manager.has(KEY)
    manager.store(KEY, {"rows": list(range(1000))})
    manager.store(KEY, {"rows": [1, 2, 3]})  # a retry's output replaces the first
    assert manager.has(KEY) and manager.load(KEY) == {"rows": [1, 2, 3]}
    reader = (
        "import sys\n"
        "from coreexec.io_managers import OutputKey\n"
        "from coreexec.object_store_io import io_manager_from_url\n"
        "print(io_manager_from_url(sys.argv[1]).load(OutputKey('run1', 'step', 'result')))\n"
    )
    seen = subprocess.run(
        [sys.executable, "-c", reader, io_url],
        capture_output=True,
        text=True,
        check=True,
        env=child_env(),
        cwd=REPO_ROOT,
        timeout=60,
    ).stdout
    assert seen.strip() == "{'rows': [1, 2, 3]}"
    # Worker processes of the multiprocess executor get the manager pickled.
    assert pickle.loads(pickle.dumps(manager)).load(KEY) == {"rows": [1, 2, 3]}


def test_a_missing_input_names_its_url(io_url: str) -> None:
    with pytest.raises(IOManagerError, match="input missing") as err:
        io_manager_from_url(io_url).load(OutputKey("run1", "nowhere", "result"))
    assert f"{io_url}/run1/nowhere/result" in str(err.value)


def test_instance_outputs_follow_the_io_url(io_url: str, tmp_path: Path) -> None:
    instance = Instance.from_settings(Settings(home=str(tmp_path / "home"), io_url=io_url))
    instance.io_manager().store(KEY, 41)
    assert io_manager_from_url(io_url).load(KEY) == 41
    assert not (tmp_path / "home" / "storage").exists()


def test_a_missing_bucket_is_named(s3_env: str) -> None:
    url = "s3://coreexec-no-such-bucket/outputs"
    with pytest.raises(IOManagerError, match="coreexec-no-such-bucket") as err:
        io_manager_from_url(url).store(KEY, 1)
    assert "does the bucket 'coreexec-no-such-bucket' exist" in str(err.value)


def test_missing_credentials_are_named_and_never_shown(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(IOManagerError, match="no credentials for s3://") as err:
        io_manager_from_url(s3_env).store(KEY, 1)
    assert "AWS_ACCESS_KEY_ID" in str(err.value) and s3_env in str(err.value)


def test_credentials_come_from_the_usual_config_file(
    s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[fleet]\naws_access_key_id = from-file\naws_secret_access_key = {S3_SECRET_KEY}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "fleet")
    manager = io_manager_from_url(s3_env)
    manager.store(KEY, "via the profile")
    assert manager.load(KEY) == "via the profile"


def test_a_url_that_is_no_url_is_refused() -> None:
    with pytest.raises(ConfigError, match="COREEXEC_IO_URL='outputs' is not a URL"):
        io_manager_from_url("outputs")


_WRITER = """
import sys
from coreexec.io_managers import OutputKey
from coreexec.object_store_io import io_manager_from_url
manager = io_manager_from_url(sys.argv[1])
value = bytes(range(256)) * (int(sys.argv[2]) // 256)
index = 0
while True:
    manager.store(OutputKey("run1", f"step{index}", "result"), value)
    print(index, flush=True)
    index += 1
"""


def _in_flight(io_url: str, tmp_path: Path, s3: S3Server | None) -> bool:
    """A write has begun and not finished: a temporary file, or an open multipart upload."""
    if s3 is None:
        return any(tmp_path.glob("outputs/run1/*/.result.*.tmp"))
    bucket = io_url.removeprefix("s3://").split("/")[0]
    client = boto3.client("s3", endpoint_url=s3.endpoint)
    return bool(client.list_multipart_uploads(Bucket=bucket).get("Uploads"))


def test_a_writer_killed_mid_write_leaves_no_half_value(
    io_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    s3 = request.getfixturevalue("s3_server") if io_url.startswith("s3://") else None
    size = 40 * 2**20  # S3: a multipart upload of five parts
    log = tmp_path / "writer.log"
    with log.open("w") as out:
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, io_url, str(size)],
            stdout=out,
            env=child_env(),
            cwd=REPO_ROOT,
        )
    try:
        # Kill it while a later value is half written (the writer writes back to back).
        def in_flight() -> bool:
            if log.read_text().strip() and _in_flight(io_url, tmp_path, s3):
                return True
            assert writer.poll() is None, "the writer died on its own"
            return False

        wait_until(in_flight, "a write in flight", 120, interval_s=0)
        writer.kill()
        writer.wait(10)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert not pid_alive(writer.pid)
    done = [int(line) for line in log.read_text().split()]
    manager: ObjectStoreIOManager = io_manager_from_url(io_url)
    expected = bytes(range(256)) * (size // 256)
    for index in done:
        assert manager.load(OutputKey("run1", f"step{index}", "result")) == expected
    killed = OutputKey("run1", f"step{done[-1] + 1}", "result")
    if manager.has(killed):
        # It completed between the last look and the kill: then it is whole.
        assert manager.load(killed) == expected
    else:
        with pytest.raises(IOManagerError, match="input missing"):
            manager.load(killed)
    manager.store(killed, b"written again")
    assert manager.load(killed) == b"written again"
