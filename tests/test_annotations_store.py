"""``Store.create_exclusive``: the write-once primitive behind commit intents and records
(local: a link that fails when the name exists; S3: PutObject with If-None-Match: *)."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from napari_zshard.store import open_store


def _create(url: str, options: dict | None, i: int, conn) -> None:
    store = open_store(url, options)
    conn.send(store.create_exclusive("a/record.json", f"writer {i}".encode()))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_exactly_one_of_eight_concurrent_creators_wins(tmp_path, where, request):
    url, options = str(tmp_path / "store"), None
    if where == "s3":
        url = request.getfixturevalue("s3_bucket") + "/store"
        options = request.getfixturevalue("s3_options")
    ctx = multiprocessing.get_context("fork")
    pipes = [ctx.Pipe() for _ in range(8)]
    procs = [ctx.Process(target=_create, args=(url, options, i, pipes[i][1])) for i in range(8)]
    for p in procs:
        p.start()
    wins = [pipes[i][0].recv() for i in range(8)]
    for p in procs:
        p.join(60)
    assert wins.count(True) == 1
    store = open_store(url, options)
    assert store.read("a/record.json") == f"writer {wins.index(True)}".encode()
    assert store.create_exclusive("a/record.json", b"late") is False
    assert store.read("a/record.json") == f"writer {wins.index(True)}".encode()
    if where == "local":
        # no temporary file or lock file is left beside the object
        assert os.listdir(tmp_path / "store" / "a") == ["record.json"]
