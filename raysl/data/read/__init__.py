"""A run's side of the data: prepared shards read, checked and streamed to the training device."""
