"""The guide's screen: a Textual TUI over the live pipeline (`explorer run` in a terminal).

The screen never touches the capture or inference threads. It drains the pipeline's one
UI channel (`Pipeline.ui_events`, a bounded queue that drops its oldest events when the
screen falls behind, counted apart from audio windows) and reads `Pipeline.status()`
snapshots, both without waiting. Storage (tours, feedback, summaries) goes through the
screen's own `Store`, opened on the UI thread.

Layout of the package:
    board.py      the tour's species as the main screen lists them (no Textual)
    melstrip.py   the scrolling spectrogram's columns, from the mel the model sees
    status.py     the status line's facts: microphone, bundle, RTF, drops, sync, disk, battery
    feed.py       the one channel: drains UI events, reads status, never blocks
    app.py        `ExplorerApp`: polls the feed, owns the models, themes and app keys
    screens/      main, species detail, tour summary, help, dialogs
    widgets/      spectrogram, level meter, species table, status bar
    run.py        what `explorer run` calls when attached to a terminal (or with --serve)
    serve.py      the phone view through textual-serve, and the state file it reads
    viewer.py     the served (read-only) app: `python -m device.tui.viewer`
"""
