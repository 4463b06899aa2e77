"""Storage port and its adapters: SQLite (embedded default), MySQL protocol (TiDB)."""
