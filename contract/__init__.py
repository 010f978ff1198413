"""The artifact contract both sides share: the manifest and its files (artifact.py), and
text -> model feeds (encoding.py). Imports nothing else of this project, and never torch."""
