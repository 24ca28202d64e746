"""Storage options per URL prefix: what drag-and-drop and the Save dialog use, since they cannot
pass options themselves."""

from __future__ import annotations

import json

import pytest

from napari_zshard.store import FullRequest, open_store, options_for
from napari_zshard.store.config import StorageConfigError, config_path


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    """Write a TOML storage configuration and point ``$NAPARI_ZSHARD_CONFIG`` at it."""
    path = tmp_path / "storage.toml"
    monkeypatch.setenv("NAPARI_ZSHARD_CONFIG", str(path))

    def write(text: str):
        path.write_text(text)
        return path

    return write


def test_without_any_configuration_a_url_has_no_options():
    assert options_for("s3://some-bucket/vol.zarr") == {}


def test_the_config_file_gives_options_to_urls_below_a_prefix(config_file):
    config_file('["s3://lab-bucket/"]\nprofile = "lab"\n\n'
                '["s3://public-data/"]\nanon = true\n')

    assert options_for("s3://lab-bucket/2024/vol.zarr") == {"profile": "lab"}
    assert options_for("s3://public-data/vol.zarr") == {"anon": True}
    assert options_for("s3://elsewhere/vol.zarr") == {}


def test_the_longest_matching_prefix_wins(config_file):
    config_file('["s3://lab/"]\nprofile = "lab"\n\n'
                '["s3://lab/shared/"]\nprofile = "shared"\n')

    assert options_for("s3://lab/shared/vol.zarr") == {"profile": "shared"}
    assert options_for("s3://lab/private/vol.zarr") == {"profile": "lab"}


@pytest.mark.parametrize(("prefix", "url", "matches"), [
    ("s3://lab/", "s3://lab", True),                      # the bucket root itself
    ("s3://lab", "s3://lab/vol.zarr", True),              # with or without the slash
    ("s3://lab/", "s3://lab-public/vol.zarr", False),     # another bucket
    ("s3://lab", "s3://lab-public/vol.zarr", False),
    ("https://data.lab.org", "https://data.lab.org.example.net/v.zarr", False),  # another host
    ("https://data.lab.org/a", "https://data.lab.org/ab/v.zarr", False),
    ("s3://", "s3://any-bucket/vol.zarr", True),          # a whole protocol
])
def test_a_prefix_only_matches_whole_path_segments(config_file, prefix, url, matches):
    # options often hold credentials: they must never reach another bucket or host
    config_file(f'["{prefix}"]\nprofile = "lab"\n')

    assert (options_for(url) == {"profile": "lab"}) is matches


def test_the_environment_variable_adds_prefixes_and_overrides_the_file(config_file,
                                                                       monkeypatch):
    config_file('["s3://lab/"]\nprofile = "lab"\nrequester_pays = true\n')
    monkeypatch.setenv("NAPARI_ZSHARD_STORAGE_OPTIONS", json.dumps({
        "s3://lab": {"profile": "override"},
        "https://data.example.org/": {"block_size": 0},
    }))

    assert options_for("s3://lab/vol.zarr") == {"profile": "override", "requester_pays": True}
    assert options_for("https://data.example.org/v.zarr") == {"block_size": 0}


def test_explicit_options_override_configured_ones(monkeypatch, s3_options):
    monkeypatch.setenv("NAPARI_ZSHARD_STORAGE_OPTIONS", json.dumps({
        "s3://lab/": {"endpoint_url": "http://127.0.0.1:9", "requester_pays": False},
    }))

    store = open_store("s3://lab/vol.zarr", s3_options)

    assert store.options == {**s3_options, "requester_pays": False}


def test_drag_and_drop_of_a_private_bucket_reaches_it_through_the_config_file(
        config_file, s3_bucket, s3_endpoint, s3_options):
    open_store(f"{s3_bucket}/vol.zarr", s3_options).write("zarr.json", b"{}")
    config_file(f'["{s3_bucket}/"]\nendpoint_url = "{s3_endpoint}"\n')

    store = open_store(f"{s3_bucket}/vol.zarr")  # no options, as napari's reader calls it

    assert store.read_many([FullRequest("zarr.json")])[0].data == b"{}"


def test_without_the_variable_the_file_lives_in_the_xdg_config_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("NAPARI_ZSHARD_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "napari-zshard").mkdir()
    (tmp_path / "napari-zshard" / "storage.toml").write_text('["gs://lab/"]\ntoken = "anon"\n')

    assert config_path() == tmp_path / "napari-zshard" / "storage.toml"
    assert options_for("gs://lab/vol.zarr") == {"token": "anon"}


# -- mistakes in the configuration are reported, not ignored ----------------------------------
def test_a_malformed_config_file_is_an_error_naming_the_file(config_file):
    path = config_file('["s3://lab/"\nprofile = \n')

    with pytest.raises(StorageConfigError, match=str(path)):
        options_for("s3://lab/vol.zarr")
    with pytest.raises(StorageConfigError):
        open_store("s3://lab/vol.zarr")


def test_options_outside_a_prefix_table_are_an_error(config_file):
    config_file('profile = "lab"\n')

    with pytest.raises(StorageConfigError, match="mapping of URL prefix"):
        options_for("s3://lab/vol.zarr")


@pytest.mark.parametrize("value", ["{not json", '["s3://lab/"]', '{"s3://lab/": "anon"}'])
def test_a_malformed_environment_variable_is_an_error_naming_it(monkeypatch, value):
    monkeypatch.setenv("NAPARI_ZSHARD_STORAGE_OPTIONS", value)

    with pytest.raises(StorageConfigError, match="NAPARI_ZSHARD_STORAGE_OPTIONS"):
        options_for("s3://lab/vol.zarr")
