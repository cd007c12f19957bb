"""Device-side commands: adapt, predict, info, demo (torch-free)."""
