"""Hydra finds this package's SearchPathPlugin by itself (plugins live in the `hydra_plugins` namespace)."""
