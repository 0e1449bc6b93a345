"""Atomic writes leave files a lab group can read, like any other file the user writes."""

from __future__ import annotations

import stat

from lrerr_tools.atomic_io import atomic_write_bytes, create_json_once


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_files_get_the_mode_a_plain_open_gives(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")

    atomic_write_bytes(tmp_path / "atomic.bin", b"x")
    create_json_once(tmp_path / "once.json", {"a": 1})

    assert mode(tmp_path / "atomic.bin") == mode(plain)
    assert mode(tmp_path / "once.json") == mode(plain)


def test_atomic_writes_replace_and_create_once_keeps_the_first(tmp_path):
    path = tmp_path / "file.bin"
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert create_json_once(tmp_path / "once.json", {"a": 1}) == {"a": 1}
    assert create_json_once(tmp_path / "once.json", {"a": 2}) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin", "once.json"]  # no temp files left
