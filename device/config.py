"""The device's one configuration file (`$EXPLORER_HOME/config.toml`), typed and validated.

Defaults live on the fields; the file overrides them; command-line flags override the file
(`Settings.with_overrides`). An invalid value is refused at start with `ConfigError`,
naming the file, the key and the reason. Runtime-only values never live here.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.contracts.checks import check_device_id


class ConfigError(ValueError):
    """A configuration value the device refuses: names the file, key and reason."""


@dataclass(frozen=True)
class DeviceSettings:
    id: str = "explorer-dev"
    """Stable id of this device; stamped on every detection and sync message, so it follows the
    wire contract's rule (`device.contracts.checks.DEVICE_ID_RULE`), checked at start."""
    site: str = "El Silencio Natural Reserve"
    """Stamped on every detection and tour (at most 128 characters, the wire's limit; empty:
    none)."""
    latitude: float | None = None
    longitude: float | None = None
    """Decimal degrees (WGS84) of where the device works, both or neither: stamped on every
    detection and tour; researchers' exports (Darwin Core) carry them."""
    coordinate_uncertainty_m: float = 1000.0
    """How far (metres) a detection may be from latitude/longitude: Darwin Core's
    coordinateUncertaintyInMeters, stamped with the coordinates (never without them). The device
    has no GNSS: the coordinates are one point for its whole beat, while a guide carries it along
    the trails around it (a walk of a few kilometres stays within about 1 km of a central point)
    and it hears calls up to ~100 m away in forest. 1,000 m covers both; a point typed with two
    decimals (6.23) is itself only good to ~0.8 km. Georeferencing practice (GBIF) is to err
    large: an understated uncertainty misleads a species-distribution model, an overstated one
    only weighs the record less. A recorder left at one spot, with its own coordinates, can say
    100 m."""


@dataclass(frozen=True)
class AudioSettings:
    microphone: str = "default"
    """Input device by name (a substring match) or index; `default` is the system default."""
    hop_s: float = 2.5
    """Live hop between window starts. Below the window length windows overlap, which
    recovers calls cut at window edges; files analysed with `explorer analyze` use 5 s."""
    queue_windows: int = 8
    """Windows waiting for inference before the oldest is dropped (and counted)."""
    reconnect_max_s: float = 30.0
    """Longest wait between attempts to reopen a microphone that disappeared."""


@dataclass(frozen=True)
class InferenceSettings:
    threads: int = 0
    """Total onnxruntime threads across branches; 0 uses each branch's manifest hint."""


@dataclass(frozen=True)
class DetectionSettings:
    thresholds: dict[str, float] = field(default_factory=dict)
    """Per-label overrides of the bundle's thresholds, by primary_label."""
    min_threshold: float = 0.0
    """A floor under every threshold (raise it to make the device quieter)."""
    merge_gap_windows: int = 0
    """Windows without the label an event may span before it closes."""


@dataclass(frozen=True)
class ClipSettings:
    enabled: bool = True
    budget_mb: float = 512.0
    """Disk the clips may use; past it the oldest are deleted (never their detections)."""
    keep_per_species: int = 3
    """Clips per label that retention never deletes. A clip is the audio of the event's
    peak window: what the model heard when it was surest."""


HUMAN_VOCAL_THRESHOLD = 0.05
"""`[privacy] human_vocal_threshold`: a window whose BirdNET "Human vocal" score is over this keeps
no audio. Chosen on the only real speech in the shared data (negatives/whisper_jfk_speech.flac, 11
s), fitted on its FIRST half alone and tested (tests/device/run/test_privacy.py) on the second.
Scores are the engine's: 5 s windows, sigmoid, max over the 3 s crops.

- Speech alone: 0.805-0.898 on first-half windows (5 s, every 0.25 s), 0.849-0.880 on the second.
- Every non-speech recording of recordings.csv and recordings_more.csv (5 s windows every 2.5 s,
  491 windows): at most 0.004 on the BirdCLEF frogs, 0.003 on the 53 Colombian frog calls, 0.006
  on the birds, 0.005 on the insects, 0.001 on the El Silencio soundscape and other/, 0.021 on the
  mammals (jaguar), 0.024 on the 382 s BirdCLEF sample; the negatives' highest is a bee's buzz
  (0.042), then the unlabelled sample, the jaguar, a tiger (0.018), a leopard (0.013), a bumble
  bee (0.012); rain, thunder, wind and water stay under 0.005.
- The first half mixed over each of the 13 in-space frog calls (speech RMS relative to the frog's
  over 5 s): 0 dB 0.018-0.748, -10 dB 0.001-0.383, -20 dB 0.000-0.054. A talking voice a frog
  call masks scores far lower than speech alone, so the lower the threshold, the more is withheld.

The rule: the lowest round value above every non-speech window (0.042), so no animal call loses
its clip on this data; any higher withholds fewer first-half windows (at 0.05: 11 of 13 at 0 dB,
5 of 13 at -10 dB, 1 of 13 at -20 dB; at 0.1: 8, 3 and 0). Held out, the second half at 0.05: 13
of 13 windows at 0 dB, 9 of 13 at -10 dB, 3 of 13 at -20 dB. Speech 20 dB under a frog call is
mostly not heard as speech by BirdNET at any threshold this data allows; a person talking near
the device, as a tour group does, is.

BirdNET-Go's privacy filter uses 0.05 too, on the same sigmoid (its `sensitivity` 1.0) of one
3 s chunk; ours takes the max over a 5 s window's two crops, so it withholds slightly more, and it
drops only the clip (BirdNET-Go drops the detection), so a false alarm costs a clip, not a record.
"""


@dataclass(frozen=True)
class PrivacySettings:
    enabled: bool = True
    """Keep no audio of people: a detection in or next to a window whose "Human vocal" score is
    over `human_vocal_threshold` (the window before it opened, any of its windows, the one that
    closed it) is stored and synced without its clip, which is never written. On by default: a
    tour group talks, and a clip on disk may later be uploaded."""
    human_vocal_threshold: float = HUMAN_VOCAL_THRESHOLD
    """See HUMAN_VOCAL_THRESHOLD for how 0.05 was chosen on real speech."""
    suppress_while_loud: bool = False
    """Open no detection while one of `loud_classes` is over `loud_threshold` (a loud window hears
    nothing): BirdNET-Go users report false birds under engines, sirens, shots and fireworks.
    Off by default: the reserve is quiet, and thunder, which BirdNET scores as Fireworks (0.922 on
    the shared thunder), would also silence the frogs calling through a storm."""
    loud_threshold: float = 0.5
    """Probability over which a loud class suppresses detections: BirdNET's "more likely than not".
    On the shared data no animal recording comes near it (Fireworks 0.342 on the 382 s BirdCLEF
    sample, 0.101 on the El Silencio soundscape; Engine 0.030 on the frogs), while thunder
    (Fireworks 0.922) and a bee's buzz (Engine 0.582) pass it."""
    loud_classes: tuple[str, ...] = ("Engine", "Siren", "Gun", "Fireworks")
    """Context outputs that suppress detections while loud (names as the bundle's `outputs.context`
    lists them); a name the bundle lacks never suppresses."""


@dataclass(frozen=True)
class SyncSettings:
    enabled: bool = False
    host: str = "localhost"
    port: int = 1883
    tls: bool = False
    username: str = ""
    password: str = field(default="", repr=False)
    ca_file: str = ""
    """With tls: the CA that signed the broker's certificate (empty: the system's CAs)."""
    interval_s: float = 30.0
    """Seconds between drains of the outbox while running (a new detection also starts one)."""
    receipt_timeout_s: float = 600.0
    """Seconds a message the broker acknowledged may wait for the server's receipt before it is
    sent again. The broker's PUBACK only says the broker has it (a broker crash loses what it had
    not saved); the receipt says the server committed it. Ten minutes is far above the ingest's
    usual commit-and-receipt time (well under a second; a week's backlog from one device drains
    in under a minute), so a healthy link never resends, yet short enough that what a broker
    crash lost is sent again while the guide is still in coverage. A resend is harmless (the
    server upserts on the record's id), only wasted bytes on a paid link."""
    status_interval_s: float = 300.0
    """Seconds between the retained status messages the worker publishes while connected (it
    also publishes one on connect and when something a person would act on changes)."""
    clip_budget_mb_per_day: float = 20.0
    """Megabytes (10^6 bytes) of clip chunks sent per UTC day, resends included; 0 turns clip
    upload off. Only clips a guide judged or the server asked for go (device/sync/clips.py). A
    clip is the 5 s peak window as 16-bit FLAC: 140-330 KB on the project's recordings (median
    ~180 KB at 32 kHz, ~250 KB at 44.1 kHz), so 20 MB is about a hundred clips a day: a tour's
    verdicts and the server's lowest-confidence asks, and about 600 MB a month, a small share
    of a metered SIM plan. Detections never wait for clips and cost about 1 KB each."""
    clip_chunk_kb: int = 32
    """KiB of clip per chunk (at most 64, the wire contract's limit): small enough that a
    dropped link costs little and a detection waits at most one chunk behind a clip."""


@dataclass(frozen=True)
class Settings:
    device: DeviceSettings = field(default_factory=DeviceSettings)
    audio: AudioSettings = field(default_factory=AudioSettings)
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    clips: ClipSettings = field(default_factory=ClipSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    sync: SyncSettings = field(default_factory=SyncSettings)

    def with_overrides(self, **sections: dict[str, Any]) -> "Settings":
        """A copy with flag values applied, e.g. `with_overrides(audio={"hop_s": 5.0})`;
        None values are ignored (an unset flag)."""
        changed = {}
        for name, values in sections.items():
            values = {k: v for k, v in values.items() if v is not None}
            if values:
                section = getattr(self, name)
                changed[name] = _build_section(type(section), {**dataclasses.asdict(section), **values}, "flags", name)
        return dataclasses.replace(self, **changed)


def _check_number(value: Any, where: str, low: float | None = None, high: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    if low is not None and value < low:
        raise ConfigError(f"{where}: {value} is below the minimum {low}")
    if high is not None and value > high:
        raise ConfigError(f"{where}: {value} is above the maximum {high}")


MAX_UNCERTAINTY_M = 20_037_509.0
"""Half the Earth's circumference: Darwin Core's largest meaningful uncertainty."""


def _check_positive(value: Any, where: str, high: float) -> None:
    _check_number(value, where, 0, high)
    if value <= 0:
        raise ConfigError(f"{where}: {value} must be above 0")


def _check_site(value: Any, where: str) -> None:
    # The wire contract's limits: a site the payload refuses would fail every detection save.
    from device.contracts.detection import MAX_SITE_CHARS

    if len(value) > MAX_SITE_CHARS:
        raise ConfigError(f"{where}: {len(value)} characters is over the {MAX_SITE_CHARS}-character limit")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(f"{where}: holds control characters")


def _check_device_id(value: Any, where: str) -> None:
    # The wire contract's own rule: an id the payload refuses would fail every detection save.
    try:
        check_device_id(value, where)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# Per-area validation: (section, key) -> check(value, where)
_RULES = {
    ("device", "id"): _check_device_id,
    ("device", "latitude"): lambda v, w: v is None or _check_number(v, w, -90, 90),
    ("device", "longitude"): lambda v, w: v is None or _check_number(v, w, -180, 180),
    ("device", "coordinate_uncertainty_m"): lambda v, w: _check_positive(v, w, MAX_UNCERTAINTY_M),
    ("device", "site"): lambda v, w: _check_site(v, w),
    ("audio", "hop_s"): lambda v, w: _check_number(v, w, 0.25, 60),
    ("audio", "queue_windows"): lambda v, w: _check_number(v, w, 1, 10_000),
    ("audio", "reconnect_max_s"): lambda v, w: _check_number(v, w, 0.1, 3600),
    ("inference", "threads"): lambda v, w: _check_number(v, w, 0, 64),
    ("detection", "min_threshold"): lambda v, w: _check_number(v, w, 0, 1),
    ("detection", "merge_gap_windows"): lambda v, w: _check_number(v, w, 0, 100),
    ("clips", "budget_mb"): lambda v, w: _check_number(v, w, 0),
    ("clips", "keep_per_species"): lambda v, w: _check_number(v, w, 0, 10_000),
    ("privacy", "human_vocal_threshold"): lambda v, w: _check_number(v, w, 0, 1),
    ("privacy", "loud_threshold"): lambda v, w: _check_number(v, w, 0, 1),
    ("sync", "port"): lambda v, w: _check_number(v, w, 1, 65535),
    ("sync", "interval_s"): lambda v, w: _check_number(v, w, 1, 86_400),
    ("sync", "receipt_timeout_s"): lambda v, w: _check_number(v, w, 1, 7 * 86_400),
    ("sync", "status_interval_s"): lambda v, w: _check_number(v, w, 1, 86_400),
    ("sync", "clip_budget_mb_per_day"): lambda v, w: _check_number(v, w, 0, 100_000),
    ("sync", "clip_chunk_kb"): lambda v, w: _check_number(v, w, 1, 64),
}


def _check_names(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)) and all(isinstance(name, str) and name.strip() for name in value):
        return tuple(value)
    raise ConfigError(f"{where}: expected a list of names, e.g. [\"Engine\", \"Siren\"], got {value!r}")


def _check_thresholds(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table of label = threshold")
    for label, threshold in value.items():
        _check_number(threshold, f"{where}.{label}", 0, 1)


def _build_section(cls: type, values: dict[str, Any], source: str, section: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        where = f"{source}: [{section}] {key}"
        if key not in fields:
            raise ConfigError(f"{where}: unknown key (known: {', '.join(fields)})")
        default = fields[key].default
        if isinstance(default, tuple):  # a TOML array of names (e.g. [privacy] loud_classes)
            values[key] = value = _check_names(value, where)
        elif default is not dataclasses.MISSING and default is not None:
            expected = type(default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                values[key] = value = float(value)
            if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
                raise ConfigError(f"{where}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
        if (section, key) in _RULES:
            _RULES[(section, key)](value, where)
    if section == "detection" and "thresholds" in values:
        _check_thresholds(values["thresholds"], f"{source}: [detection] thresholds")
    return cls(**values)


def parse_settings(raw: dict[str, Any], source: str) -> Settings:
    """Build `Settings` from a decoded TOML document, refusing unknown or invalid values."""
    sections = {f.name: f for f in dataclasses.fields(Settings)}
    built = {}
    for name, values in raw.items():
        if name not in sections:
            raise ConfigError(f"{source}: [{name}]: unknown section (known: {', '.join(sections)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}]: expected a table")
        built[name] = _build_section(sections[name].default_factory().__class__, dict(values), source, name)
    settings = Settings(**built)
    _check_place(settings.device, source)
    _check_sync(settings.sync, source)
    return settings


def _check_place(device: DeviceSettings, source: str) -> None:
    """A latitude without a longitude (or the reverse) places nothing: refused at start."""
    if (device.latitude is None) != (device.longitude is None):
        given, missing = ("latitude", "longitude") if device.longitude is None else ("longitude", "latitude")
        raise ConfigError(f"{source}: [device] {missing}: missing while [device] {given} is set (give both or neither)")


def _check_sync(sync: SyncSettings, source: str) -> None:
    """Rules across [sync]'s keys: checked at start, so a run never discovers on the trail,
    hours later, that it could never have delivered anything."""
    if not sync.enabled:
        return
    if not sync.host.strip():
        raise ConfigError(f"{source}: [sync] host: empty while [sync] enabled is true")
    if sync.tls and sync.ca_file and not Path(sync.ca_file).is_file():
        raise ConfigError(f"{source}: [sync] ca_file: {sync.ca_file} is not a readable file (tls is on)")


def load_settings(path: Path) -> Settings:
    """The settings in `path`, or the defaults when it does not exist."""
    path = Path(path)
    if not path.exists():
        return Settings()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return parse_settings(raw, str(path))
