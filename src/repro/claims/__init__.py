"""The claims ledger: every claim of the four sources, the number that tests it and a computed verdict."""
