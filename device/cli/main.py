"""The one `explorer` entry point.

Each subcommand lives in its own module and is imported only when it is invoked, so
`explorer tour list` never loads onnxruntime and `explorer export` (the operator's tool)
is the only command that loads the exporter's stack.
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click command or group, imported on first use.
SUBCOMMANDS = {
    "run": "device.cli.run_cmd:run",
    "analyze": "device.cli.analyze_cmd:analyze",
    "bundle": "device.cli.bundle_cmd:bundle",
    "tour": "device.cli.tour_cmd:tour",
    "detections": "device.cli.detections_cmd:detections",
    "sync": "device.cli.sync_cmd:sync",
    "export": "exporter.cli:export",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on demand."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module_name, attribute = self.lazy[name].split(":")
            return getattr(importlib.import_module(module_name), attribute)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, lazy=SUBCOMMANDS)
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=str),
    envvar="EXPLORER_HOME",
    help="The data directory (database, clips, bundles, keys, config.toml). Default: $EXPLORER_HOME or ~/.local/share/elsilencio-explorer.",
)
@click.version_option(package_name="elsilencio-explorer")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """El Silencio Acoustic Explorer: hear who lives in the forest.

    Example:

        explorer run --source examples/H02_20230420_074000.ogg --headless
    """
    from device.home import ExplorerHome

    ctx.obj = ExplorerHome.resolve(home)


if __name__ == "__main__":
    cli()
