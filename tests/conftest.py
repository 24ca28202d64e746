"""Shared fixtures: real servers on 127.0.0.1 (a Range-capable HTTP server, moto's S3) and an
environment that cannot leak the developer's storage configuration or cloud credentials."""

from __future__ import annotations

import linecache
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from napari_zshard.testing import RangeHTTPServer

# gcsfs asks GCS's control plane over gRPC what kind of bucket it reads, which no emulator
# serves; read at gcsfs's import, so set before any test can import it (testing/gcs_server.py).
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

# Variables that would point a test at the developer's own cloud account or endpoint.
_FOREIGN_AWS = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
)


@pytest.fixture(scope="session", autouse=True)
def _fake_aws_credentials(tmp_path_factory) -> Iterator[None]:
    """Fake AWS credentials for the whole session (moto accepts anything), and nothing of the
    developer's: no profile, no credentials file, no instance-metadata probe, no proxy."""
    aws_home = tmp_path_factory.getbasetemp() / "no-aws-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(aws_home / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws_home / "credentials"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in _FOREIGN_AWS:
            mp.delenv(name, raising=False)
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        yield


@pytest.fixture(autouse=True)
def _isolated_storage_config(tmp_path_factory, monkeypatch) -> None:
    """No test sees ``~/.config/napari-zshard/storage.toml`` or the developer's
    ``$NAPARI_ZSHARD_STORAGE_OPTIONS``; a test opts in with ``monkeypatch.setenv``."""
    missing = tmp_path_factory.getbasetemp() / "no-such-dir" / "storage.toml"
    monkeypatch.setenv("NAPARI_ZSHARD_CONFIG", str(missing))
    monkeypatch.delenv("NAPARI_ZSHARD_STORAGE_OPTIONS", raising=False)


# -- CI: a missing dependency fails the run ----------------------------------------------------
# Locally, a test whose dependency is missing (napari, Qt, tensorstore, moto, ...) is skipped
# through ``pytest.importorskip``. In CI a skip like that hides a broken install behind a green
# run (a missing napari turned every GUI module into skips), so with ``$CI`` set it is a failure.
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _skipped_for_a_missing_module(report: pytest.CollectReport | pytest.TestReport) -> bool:
    """A skip raised by ``pytest.importorskip``: its location (importorskip's caller) calls it,
    or it carries importorskip's own message."""
    if not (report.skipped and isinstance(report.longrepr, tuple)):
        return False
    path, lineno, message = report.longrepr
    return "could not import" in message or "importorskip(" in linecache.getline(
        str(path), int(lineno))


def _fail_in_ci(report: pytest.CollectReport | pytest.TestReport) -> None:
    if IN_CI and _skipped_for_a_missing_module(report):
        path, lineno, message = report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"{path}:{lineno}: a test dependency is missing and CI is set, so "
                           f"this is a failure, not a skip: {message}")


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    _fail_in_ci(report)  # a module-level importorskip
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _fail_in_ci(report)  # importorskip in a test or a fixture
    return report


# -- HTTP -------------------------------------------------------------------------------------
@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[RangeHTTPServer]:
    """A Range-capable HTTP server on 127.0.0.1 serving ``tmp_path``: write a store into
    ``tmp_path / "name.zarr"``, read it through ``f"{http_server.url}/name.zarr"``."""
    with RangeHTTPServer(tmp_path) as server:
        yield server


# -- S3 ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def s3_endpoint(_fake_aws_credentials) -> Iterator[str]:
    """moto's S3 on 127.0.0.1 for the whole session (fake credentials are in the environment);
    returns the endpoint URL."""
    pytest.importorskip("moto.server", reason="the S3 tests need moto[server]")
    pytest.importorskip("s3fs", reason="the S3 tests need s3fs")
    from napari_zshard.testing.s3_server import MotoS3Server

    with MotoS3Server() as server:
        yield server.endpoint_url


@pytest.fixture
def s3_options(s3_endpoint: str) -> dict[str, str]:
    """Storage options that reach the moto server."""
    return {"endpoint_url": s3_endpoint}


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket; returns ``"s3://<bucket>"``."""
    from napari_zshard.testing.s3_server import s3_filesystem

    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_filesystem(s3_endpoint).mkdir(name)
    return f"s3://{name}"


def put_on_s3(local_store_dir: str | os.PathLike, s3_url: str, endpoint: str) -> int:
    """Copy a store written locally to ``s3_url`` on the moto server; returns the object count."""
    from napari_zshard.testing.s3_server import upload_dir

    return upload_dir(local_store_dir, s3_url, endpoint)


# -- GCS --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def gcs_emulator():
    """gcp-storage-emulator on 127.0.0.1 for the whole session (anonymous access)."""
    pytest.importorskip("gcp_storage_emulator", reason="the GCS tests need gcp-storage-emulator")
    from napari_zshard.testing.gcs_server import GCSEmulator

    emulator = GCSEmulator()  # before gcsfs is imported (see its module)
    pytest.importorskip("gcsfs", reason="the GCS tests need gcsfs")
    with emulator:
        yield emulator


@pytest.fixture
def gcs_bucket(gcs_emulator) -> str:
    """A fresh, empty bucket; returns ``"gs://<bucket>"``."""
    return gcs_emulator.make_bucket(f"test-{uuid.uuid4().hex[:16]}")


@pytest.fixture(name="put_on_s3")
def put_on_s3_fixture():
    """:func:`put_on_s3` as a fixture, for tests that prefer not to import from conftest."""
    return put_on_s3


# -- the sample volume ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sample_cache(tmp_path_factory) -> Path:
    """A ``$NAPARI_ZSHARD_CACHE`` folder for the session: the sample volume is generated there
    once, by the first test that needs it (never into the developer's ~/.cache)."""
    return tmp_path_factory.mktemp("sample-cache")
