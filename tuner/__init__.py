"""The tuning layer: LibTuner, key strategies, environment fingerprints, benchmarking,
and the layered tuning store (memory -> local SQLite/PostgreSQL -> tunerd)."""
from tuner.libtuner import LibTuner, clear_caches, libtuner, resolved_configs
from tuner.stats import reset_stats, stats

__all__ = ["LibTuner", "clear_caches", "libtuner", "resolved_configs", "reset_stats", "stats"]
