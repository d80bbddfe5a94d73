"""Programs the tests run as processes of their own (each is run as `python FILE`, never imported)."""
