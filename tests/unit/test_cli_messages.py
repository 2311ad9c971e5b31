"""Common mistakes get one sentence and a non-zero exit, never a traceback: no stack running, a wrong
endpoint, no API key, no or refused AWS credentials, an unreachable database, bad input files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from visionq import cli
from visionq.errors import ConfigError
from visionq.local_stack import free_port
from visionq.stores.aws_errors import translate_client_error


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no .visionq/local.env here
    for name in ("API_URL", "VISIONQ_API_KEY", "AWS_ENDPOINT_URL", "AWS_PROFILE", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no wait for an instance's credentials
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, err.strip()


def test_no_stack_running(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "status", "0" * 32)
    assert code == 2
    assert err == "visionq: API_URL is not set and .visionq/local.env does not exist: run `visionq up` first"


def test_a_wrong_endpoint(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("VISIONQ_API_KEY", "vq_x_y")
    code, err = run(capsys, "status", "0" * 32)
    assert code == 1
    assert err.startswith("visionq: cannot reach the API") and "is `visionq up` running?" in err


def test_an_api_key_missing_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_URL", "http://127.0.0.1:9")
    code, err = run(capsys, "status", "0" * 32)
    assert code == 2
    assert "VISIONQ_API_KEY is not set" in err and "visionq keys create" in err


def test_no_aws_credentials(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("VISIONQ_JOBS_TABLE", "jobs")
    code, err = run(capsys, "keys", "list")
    assert code == 2
    assert "no AWS credentials found" in err


def test_an_unreachable_aws_endpoint(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("VISIONQ_JOBS_TABLE", "jobs")
    code, err = run(capsys, "keys", "list")
    assert code == 2
    assert "cannot reach AWS at http://127.0.0.1:" in err


def test_refused_credentials_name_the_fix() -> None:
    error = ClientError({"Error": {"Code": "UnrecognizedClientException", "Message": "bad"}}, "Query")
    translated = translate_client_error(error, "list api keys")
    assert isinstance(translated, ConfigError)
    assert "AWS refused these credentials" in translated.message


def test_an_unreachable_database(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/visionq"
    code, err = run(capsys, "bootstrap", "--schema-only", "--database-url", url)
    assert code == 1
    assert err.startswith("visionq: ") and len(err.splitlines()) == 1


def test_a_corrupt_video_is_refused_before_anything_is_created(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("API_URL", f"http://127.0.0.1:{free_port()}")  # never reached
    monkeypatch.setenv("VISIONQ_API_KEY", "vq_x_y")
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    code, err = run(capsys, "submit", "clip.mp4")
    assert code == 2
    assert err.startswith("visionq: ") and "clip.mp4" in err
    assert not (tmp_path / ".visionq" / "batches").exists()


def test_a_folder_without_images_names_what_it_skipped(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("API_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("VISIONQ_API_KEY", "vq_x_y")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    (folder / "data.csv").write_text("a,b")
    code, err = run(capsys, "submit", "folder")
    assert code == 2
    lines = err.splitlines()
    assert any("skipping folder/data.csv: not an image" in line for line in lines)
    assert any("skipping folder/notes.txt: not an image" in line for line in lines)
    assert lines[-1] == "visionq: no images to submit"


def test_sampling_options_need_a_video(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"png")
    code, err = run(capsys, "submit", "a.png", "--every", "2")
    assert code == 2 and "--fps and --every apply to a video" in err


@pytest.fixture
def not_the_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """API_URL pointing at some other web server: every path answers 200 with a page of HTML."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            body = b"<html><body>welcome</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("API_URL", url)
    monkeypatch.setenv("VISIONQ_API_KEY", "vq_x_y")
    yield url
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("command", [["status", "0" * 32], ["batch", "0" * 32], ["submit", "a.jpg"]])
def test_a_server_that_is_not_the_api(
    capsys: pytest.CaptureFixture[str], not_the_api: str, tmp_path: Path, command: list[str]
) -> None:
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff")
    code, err = run(capsys, *command)
    assert code != 0
    assert f"{not_the_api} did not answer as the visionq API" in err


def test_a_bad_number_in_the_environment_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VISIONQ_VIDEO_MAX_FRAMES", "1k")
    code, err = run(capsys, "status", "0" * 32)
    assert code == 2
    assert "VISIONQ_VIDEO_MAX_FRAMES" in err and "'1k'" in err


def test_max_frames_must_be_positive(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["submit", "clip.mp4", "--max-frames", "0"])
    assert exited.value.code == 2
    assert "--max-frames" in capsys.readouterr().err


def test_an_upload_the_object_store_refuses_is_told_in_a_sentence() -> None:
    from visionq.client import _storage_refusal

    xml = (
        '<?xml version="1.0" encoding="UTF-8"?><Error><Code>EntityTooLarge</Code>'
        "<Message>Your proposed upload exceeds the maximum allowed size</Message></Error>"
    )
    assert _storage_refusal("uploads/j/big.jpg", xml) == (
        "the object store refused big.jpg: EntityTooLarge (Your proposed upload exceeds the maximum allowed size)"
    )
