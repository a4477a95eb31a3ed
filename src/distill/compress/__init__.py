"""Compression stages run after distillation (`compress=[...]`), one file per stage family."""
