"""Git, DVC and files: the registry store, history, immutability, the state at a revision and the
release transaction. Imports the core only."""
