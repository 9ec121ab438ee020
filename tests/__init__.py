"""Test suite (a package, so tests/<pkg>/ never shadows the project package <pkg>)."""
