"""`explorer export keygen` and `explorer export demo-bundle` through click's CliRunner."""

from __future__ import annotations

import stat

from click.testing import CliRunner

from device.bundle.verify import load_trust_list
from device.cli.main import cli
from exporter.cli import export


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_keygen_writes_a_pair_into_the_home_and_can_trust_it(tmp_path):
    home = tmp_path / "home"
    result = run("--home", str(home), "export", "keygen", "--name", "release", "--trust")
    assert result.exit_code == 0, result.output
    private = home / "keys" / "signing" / "release.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    trusted = load_trust_list(home / "keys" / "trusted")
    assert len(trusted) == 1
    assert f"key id:      {next(iter(trusted))}" in result.output


def test_keygen_with_out_dir_and_no_trust(tmp_path):
    result = run("--home", str(tmp_path / "home"), "export", "keygen", "--out", str(tmp_path / "ops"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ops" / "signing.key").is_file() and (tmp_path / "ops" / "signing.pub").is_file()
    assert load_trust_list(tmp_path / "home" / "keys" / "trusted") == {}


def test_keygen_refuses_a_git_working_tree_and_exits_non_zero(tmp_path):
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    result = run("--home", str(tmp_path / "home"), "export", "keygen", "--out", str(tmp_path / "repo" / "keys"))
    assert result.exit_code != 0
    assert "git working tree" in result.output
    assert not (tmp_path / "repo" / "keys").exists()


def test_keygen_refuses_to_overwrite(tmp_path):
    args = ("--home", str(tmp_path / "home"), "export", "keygen", "--name", "k")
    assert run(*args).exit_code == 0
    again = run(*args)
    assert again.exit_code != 0 and "already exists" in again.output


def test_demo_bundle_builds_and_activates(tmp_path):
    home = tmp_path / "home"
    result = run("--home", str(home), "export", "demo-bundle")
    assert result.exit_code == 0, result.output
    assert "demo bundle active:" in result.output
    path = run("--home", str(home), "bundle", "path")
    assert path.exit_code == 0 and path.output.strip().startswith(str(home / "bundles" / "demo-tiny-"))


def test_every_export_command_has_help_ending_in_an_example():
    for command in [export, *export.commands.values()]:
        assert command.help and "Example:" in command.help, command.name
        assert command.help.rstrip().rsplit("Example:", 1)[1].strip().startswith("explorer"), command.name
