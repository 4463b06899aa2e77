"""The server's E2EE key directory (docs/e2ee.md section 3): device identity keys, signed
prekeys and one-time prekeys, stored in SQLite (its own file) or in the MySQL/TiDB database
beside the chat tables. Only public keys and signatures are ever stored here."""
