"""Where the device keeps its state: one data directory, `$EXPLORER_HOME`.

Everything the device owns lives under it, so a backup, a wipe or a second device on the
same machine is one directory: the database, clips, bundles, trusted keys, logs and the
one configuration file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "EXPLORER_HOME"


def default_home() -> Path:
    """`$EXPLORER_HOME`, else `$XDG_DATA_HOME/elsilencio-explorer`, else `~/.local/share/...`."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "elsilencio-explorer"


@dataclass(frozen=True)
class ExplorerHome:
    root: Path

    @classmethod
    def resolve(cls, root: Path | str | None = None) -> "ExplorerHome":
        return cls(Path(root).expanduser() if root else default_home())

    @property
    def config_file(self) -> Path:
        return self.root / "config.toml"

    @property
    def database(self) -> Path:
        return self.root / "explorer.db"

    @property
    def clips(self) -> Path:
        return self.root / "clips"

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    @property
    def active_bundle_pointer(self) -> Path:
        """A one-line file naming the active bundle's directory under `bundles/`."""
        return self.bundles / "ACTIVE"

    @property
    def previous_bundle_pointer(self) -> Path:
        """Names the bundle that was active before the current one: what a rollback returns to."""
        return self.bundles / "PREVIOUS"

    def previous_bundle(self) -> Path | None:
        """The bundle active before the current one, if it is still installed."""
        return self._pointed_bundle(self.previous_bundle_pointer)

    def _pointed_bundle(self, pointer: Path) -> Path | None:
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        path = self.bundles / name
        return path if name and path.is_dir() else None

    @property
    def trusted_keys(self) -> Path:
        return self.root / "keys" / "trusted"

    @property
    def signing_keys(self) -> Path:
        """Private keys made by `explorer export keygen` on an operator's machine (never on a Pi)."""
        return self.root / "keys" / "signing"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def watch_output(self) -> Path:
        return self.root / "watch-results"

    def ensure(self) -> "ExplorerHome":
        for path in (self.root, self.clips, self.bundles, self.trusted_keys, self.logs):
            path.mkdir(parents=True, exist_ok=True)
        return self

    def active_bundle(self) -> Path | None:
        """The active bundle's directory, or None when none has been installed."""
        return self._pointed_bundle(self.active_bundle_pointer)

    def set_active_bundle(self, bundle_dir: Path) -> None:
        """Point ACTIVE at a directory under `bundles/`, atomically (rename over the old pointer).

        The bundle it replaces is remembered in PREVIOUS first, so a rollback can return to it;
        a power cut between the two writes leaves ACTIVE unchanged.
        """
        bundle_dir = Path(bundle_dir).resolve()
        if bundle_dir.parent != self.bundles.resolve():
            raise ValueError(f"{bundle_dir} is not under {self.bundles}")
        current = self.active_bundle()
        if current is not None and current.name != bundle_dir.name:
            _write_pointer(self.previous_bundle_pointer, current.name)
        _write_pointer(self.active_bundle_pointer, bundle_dir.name)


def _write_pointer(pointer: Path, name: str) -> None:
    """Replace a one-line pointer file atomically and durably (temp file, fsync, rename)."""
    tmp = pointer.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, pointer)
