"""Datasets used by metrictransfer (the offline ``glyphs`` demo data lives in :mod:`.glyphs`)."""
