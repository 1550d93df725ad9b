#!/usr/bin/env bash
# Start a PulseAudio daemon with a virtual microphone fed from a FIFO, for CI and local runs.
#
# Whatever is written into the FIFO (raw s16le mono at 32 kHz) is what PortAudio's "pulse"
# and "default" inputs hear, so the live-microphone path can be tested with real recordings
# (tests/pulse.py feeds them). Idempotent: an already running daemon and an already loaded
# source are reused. Works as root (PulseAudio only warns in per-user mode).
#
# Needs (apt): pulseaudio pulseaudio-utils libasound2-plugins libportaudio2
#   libasound2-plugins carries the ALSA "pulse" plugin PortAudio reaches PulseAudio through.
#
# Environment (all optional):
#   EXPLORER_VIRTUAL_MIC_FIFO    FIFO path          (default /tmp/explorer-virtual-mic.fifo)
#   EXPLORER_VIRTUAL_MIC_SOURCE  PulseAudio source  (default explorer_virtual_mic)
#   EXPLORER_VIRTUAL_MIC_RATE    FIFO sample rate   (default 32000)
#   PYTHON                       interpreter with sounddevice, to print PortAudio's names
#
# Prints KEY=value lines (PULSE_SERVER, FIFO, SOURCE, RATE, then PORTAUDIO_INPUT per device).
set -euo pipefail

FIFO="${EXPLORER_VIRTUAL_MIC_FIFO:-/tmp/explorer-virtual-mic.fifo}"
SOURCE="${EXPLORER_VIRTUAL_MIC_SOURCE:-explorer_virtual_mic}"
RATE="${EXPLORER_VIRTUAL_MIC_RATE:-32000}"
LOG="${TMPDIR:-/tmp}/explorer-pulseaudio.log"

for tool in pulseaudio pactl; do
    command -v "$tool" >/dev/null || { echo "pulse-mic: $tool not found (apt-get install pulseaudio pulseaudio-utils)" >&2; exit 1; }
done
export HOME="${HOME:-/root}"

if ! pactl info >/dev/null 2>&1; then
    # -n: skip default.pa (it probes sound cards a container does not have); load only the
    # native protocol. auth-anonymous: clients with another HOME (no shared cookie) may connect.
    # --exit-idle-time=-1: stay up between test runs.
    # Three tries: a daemon killed a moment ago may still hold its pid file.
    for _ in 1 2 3; do
        pulseaudio --daemonize=yes --system=false --exit-idle-time=-1 -n \
            --load="module-native-protocol-unix auth-anonymous=1" \
            --log-target="file:$LOG" 2>>"$LOG" || true
        for _ in $(seq 50); do
            pactl info >/dev/null 2>&1 && break 2
            sleep 0.1
        done
    done
    pactl info >/dev/null 2>&1 || { echo "pulse-mic: PulseAudio did not start; log: $LOG" >&2; tail -20 "$LOG" >&2 || true; exit 1; }
fi

if ! pactl list short sources | awk '{print $2}' | grep -qx "$SOURCE"; then
    # module-pipe-source makes the FIFO itself and refuses one that exists. A daemon that was
    # killed (a machine image taken mid-session, a crashed run) leaves its FIFO behind: with no
    # source loaded nobody reads it, so it is stale and safe to remove. Anything else is not ours.
    if [ -p "$FIFO" ]; then
        rm -f "$FIFO"
    elif [ -e "$FIFO" ]; then
        echo "pulse-mic: $FIFO exists and is not a FIFO; remove it or set EXPLORER_VIRTUAL_MIC_FIFO" >&2
        exit 1
    fi
    pactl load-module module-pipe-source source_name="$SOURCE" file="$FIFO" \
        format=s16le rate="$RATE" channels=1 >/dev/null \
        || { echo "pulse-mic: could not load module-pipe-source; log: $LOG" >&2; tail -5 "$LOG" >&2 || true; exit 1; }
fi
pactl set-default-source "$SOURCE"

server="$(pactl info | sed -n 's/^Server String: //p')"
server="${server#unix:}"  # with PULSE_SERVER already set, pactl reports it with its prefix
echo "PULSE_SERVER=unix:$server"
echo "FIFO=$FIFO"
echo "SOURCE=$SOURCE"
echo "RATE=$RATE"

PYTHON="${PYTHON:-python3}"
PULSE_SERVER="unix:$server" "$PYTHON" - <<'EOF' 2>/dev/null || echo "PORTAUDIO_INPUT=? (no Python with sounddevice: set PYTHON)"
import sounddevice as sd
for d in sd.query_devices():
    if d["max_input_channels"] > 0:
        print(f"PORTAUDIO_INPUT={d['index']}:{d['name']}:{int(d['default_samplerate'])}")
EOF
