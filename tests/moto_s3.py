"""A real S3-protocol server on loopback for the S3 tests: ``moto_server`` (from
``moto[server]``) as a subprocess, one per test session, with one bucket made for the
tests (Barge itself never creates buckets)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import IO

from barge_process import free_port

# The part size the S3 tests use. moto, like AWS, refuses multipart parts under 5 MiB but
# the last; S3_UPLOAD_PART_MIN_SIZE lowers its limit to this, so a multipart upload stays
# small in tests while moto still checks every part but the last is at least this big.
PART_SIZE = 64 * 1024


class MotoS3:
    bucket = "barge-test"
    access_key_id = "testing"
    secret_access_key = "testing"
    region = "us-east-1"

    def __init__(self) -> None:
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> MotoS3:
        for _ in range(3):  # a free port may be taken between its choice and the bind
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            env["S3_UPLOAD_PART_MIN_SIZE"] = str(PART_SIZE)
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            )
            deadline = time.monotonic() + timeout
            while self._proc.poll() is None and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(self.url + "/moto-api/data.json", timeout=2):
                        self.request("PUT", f"/{self.bucket}")
                        return self
                except (urllib.error.URLError, ConnectionError):
                    time.sleep(0.05)
            self._halt()
        self._log.seek(0)
        output = self._log.read()[-4000:].decode(errors="replace")
        self.stop()
        raise RuntimeError(f"moto_server did not start:\n{output}")

    def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """A plain unsigned request (moto checks no signature unless auth is on)."""
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            data: bytes = resp.read()
            return data

    def env(self, **overrides: str) -> dict[str, str]:
        """The standard variables Barge reads, pointing at this server."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
        } | overrides

    def check_credentials(self, on: bool) -> None:
        """Turn moto's IAM check of every request's key and signature on or off (it is
        off by default: any key is accepted). Global to the server: tests run one by one,
        and each that turns it on turns it off again."""
        self.request("POST", "/moto-api/reset-auth", b"0" if on else b"inf")

    def stop(self) -> None:
        self._halt()
        self._log.close()

    def _halt(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
