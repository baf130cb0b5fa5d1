"""Training: the flat recipe (setup / train / validate / save), its schedule, checkpoints and devices."""
