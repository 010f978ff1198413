"""Model execution: pinned worker processes and the frames they speak."""
