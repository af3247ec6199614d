"""Where batch files' bytes live: the `FileStore` contract and its backends."""
