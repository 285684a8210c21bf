"""Model and search providers the graph's nodes call through narrow protocols."""
