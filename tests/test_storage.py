import os

import pytest

from raysegment.errors import RaySegmentError
from raysegment.storage import atomic_write_bytes, fetch_to_local, read_bytes


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["f.bin"]


def test_file_uri_and_plain_path_take_the_same_route(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"payload")
    assert read_bytes(f"file://{f}") == read_bytes(f) == b"payload"
    assert fetch_to_local(f"file://{f}") == f


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(RaySegmentError, match="does not exist"):
        read_bytes(tmp_path / "nope")
    with pytest.raises(RaySegmentError, match="does not exist"):
        fetch_to_local(tmp_path / "nope")
