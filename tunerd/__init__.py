"""tunerd: serves the tuning DB over HTTP to a cluster."""
