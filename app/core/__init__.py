"""One request through validation, tokenization, the batch queue and scoring."""
