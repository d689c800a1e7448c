"""Small helpers every layer shares: errors, reading settings files, hashing, paths, CPU budget."""
