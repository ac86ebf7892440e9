from __future__ import annotations

import re
from pathlib import Path

import pytest

from corral.config import SETTINGS, load_settings
from corral.errors import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_defaults_need_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.database_url == "sqlite:///./var/corral.db"
    assert settings.sweep_batch == 1000


def test_file_then_environment_then_command_line(tmp_path):
    config = tmp_path / "corral.toml"
    config.write_text('sweep_batch = 100\nlog_level = "debug"\nsweep_interval = 2\n')
    settings = load_settings(str(config), environ={"CORRAL_SWEEP_BATCH": "200"},
                             overrides={"log_level": "error"})
    assert (settings.sweep_batch, settings.log_level, settings.sweep_interval) == (200, "error",
                                                                                     2.0)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CORRAL_SWEEP_BATCH": "lots"}, "sweep_batch (from CORRAL_SWEEP_BATCH) must be a whole"),
        ({"CORRAL_SWEEP_INTERVAL": "0"}, "must be greater than 0"),
        ({"CORRAL_LOG_LEVEL": "loud"}, "must be one of debug, info, warning, error"),
        ({"CORRAL_SIM_PING_FAILURE": "2"}, "must be between 0 and 1"),
        # A configured command template fills in the board's values by name
        # only: attribute access, indexing and positions are refused at load.
        ({"CORRAL_COMMAND_POWER_CYCLE": "relay-ctl {name.__class__.__mro__}"},
         "command_power_cycle (from CORRAL_COMMAND_POWER_CYCLE) holds a template that is not "
         "allowed: template field {name.__class__.__mro__} is not a board attribute's name"),
        ({"CORRAL_COMMAND_PING": "ping {hostname[0]}"}, "template field {hostname[0]}"),
        ({"CORRAL_COMMAND_BOOT_LOCAL": "boot-local {}"}, "template field {}"),
        ({"CORRAL_COMMAND_POLL": "poll {hostname"},
         "command_poll (from CORRAL_COMMAND_POLL) holds a template that is not allowed: "
         "not a template (expected '}' before end of string; write {{ and }} for a brace)"),
    ],
)
def test_bad_values_are_clear_errors(env, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(environ=env)



def test_unknown_key_in_file(tmp_path):
    config = tmp_path / "corral.toml"
    config.write_text("sweep_bach = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'sweep_bach'"):
        load_settings(str(config), environ={})


def test_malformed_file(tmp_path):
    config = tmp_path / "corral.toml"
    config.write_text("sweep_batch = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(str(config), environ={})


def test_every_setting_is_documented():
    text = DOCS.read_text()
    missing = [name for name in SETTINGS if f"`{name}`" not in text]
    assert not missing, f"docs/configuration.md does not describe: {missing}"


def test_every_bad_value_of_a_source_is_named_at_once():
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"CORRAL_SWEEP_BATCH": "2.0", "CORRAL_LISTEN": "nowhere"})
    assert str(info.value) == (
        "listen (from CORRAL_LISTEN) must be HOST:PORT, e.g. 127.0.0.1:8080, not 'nowhere'; "
        "sweep_batch (from CORRAL_SWEEP_BATCH) must be a whole number, not '2.0'")
