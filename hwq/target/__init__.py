"""Targets from the core's side: the protocol a backend implements (``protocol``), the
entry-point registry and target options (``registry``), program comparison (``compare``)."""
