"""Neighbourhood-attention backends, one implementation per file; :mod:`..functional` picks one."""
