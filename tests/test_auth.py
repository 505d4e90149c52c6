"""Bearer tokens: hashes in a file, roles, and no open API beyond loopback."""

import os

import pytest

from raysegment.errors import ConfigError
from raysegment.serving.auth import TokenTable, add_token, hash_token
from raysegment.serving.config import ServeConfig


def test_tokens_are_stored_as_hashes_and_map_to_roles(tmp_path):
    path = tmp_path / "tokens"
    reader, admin = add_token(path, "dashboard", "read"), add_token(path, "ops", "admin")
    text = path.read_text()
    assert reader not in text and admin not in text and hash_token(reader) in text
    assert os.stat(path).st_mode & 0o777 == 0o600
    table = TokenTable.read(path)
    assert table.client(reader).name == "dashboard" and table.client(reader).may("read")
    assert (
        not table.client(reader).may("admin") and table.client(admin).may("admin") and table.client(admin).may("read")
    )
    assert table.client("guess") is None and table.client("") is None
    with pytest.raises(ConfigError, match="already has a client named 'ops'"):
        add_token(path, "ops", "read")


def test_a_malformed_token_file_names_the_line(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# clients\nalice read " + "a" * 64 + "\nbob superuser " + "b" * 64 + "\n")
    with pytest.raises(ConfigError, match=r"tokens:3: expected 'name role sha256-hex'"):
        TokenTable.read(path)
    with pytest.raises(ConfigError, match="does not exist"):
        TokenTable.read(tmp_path / "missing")


def test_an_open_api_is_refused_beyond_loopback():
    with pytest.raises(ValueError, match="only for a loopback bind_host"):
        ServeConfig(registry="r", auth="none", bind_host="0.0.0.0")
    with pytest.raises(ValueError, match="needs token_file"):
        ServeConfig(registry="r", auth="token", bind_host="0.0.0.0")
    assert ServeConfig(registry="r", auth="none", bind_host="127.0.0.1").auth == "none"
    assert ServeConfig(registry="r", auth="none", bind_host="::1").auth == "none"
    assert ServeConfig(registry="r", token_file="t", bind_host="0.0.0.0").auth == "token"  # token is the default


def test_serve_cli_refuses_an_open_api_on_a_public_address(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "raysegment.cli", "serve", "--registry", str(tmp_path), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "only for a loopback bind_host" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
