"""The device's audio input: everything between a sound and an analysis window.

- types.py: AudioBlock, the AudioSource protocol, AudioError
- files.py: FileSource (WAV/FLAC/OGG/MP3, streamed), recording start times
- mic.py: MicrophoneSource (live capture, reconnects, status for the meter); devices.py finds inputs
- queue.py: DropOldestQueue, the bounded hand-off whose drops are counted
- windows.py: Windower, blocks -> fixed windows on a hop grid
- resample.py: rate conversion per model branch
- watch.py: WatchFolder, complete files from a drop folder, each once

Nothing is imported here, so reading a file never loads PortAudio.
"""
