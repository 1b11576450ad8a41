"""End-to-end workflows under the CLI: `pal demo` (data → SSLAM → features → curriculum → evaluation → report)
and `pal compare` (connectors trained and evaluated under one curriculum, with seeds)."""
