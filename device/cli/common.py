"""Small helpers shared by the CLI command modules (no heavy imports here)."""

from __future__ import annotations

import click

from device.config import ConfigError, Settings, load_settings
from device.home import ExplorerHome


def home_of(ctx: click.Context) -> ExplorerHome:
    """The ExplorerHome the top-level group resolved, created on first use."""
    return ctx.find_root().obj.ensure()


def settings_of(ctx: click.Context) -> Settings:
    """The validated settings from config.toml; an invalid file stops the command with its reason."""
    home = home_of(ctx)
    try:
        return load_settings(home.config_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
