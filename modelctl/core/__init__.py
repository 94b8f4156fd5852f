"""Values and pure decisions: no git, no DVC, no writes; imports nothing else of this repository."""
