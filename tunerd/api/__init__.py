"""tunerd's HTTP API (versioned under ``/v1``)."""
