"""The guide's screens: main (species, spectrogram, status), species detail, tour summary, help, dialogs."""
