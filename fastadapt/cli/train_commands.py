"""Server-side commands: train, evaluate, export (torch imported inside the commands)."""
