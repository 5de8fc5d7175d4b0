"""Alembic migrations of the control-plane database; run them via `control_plane.migrate`.

This package has no `alembic.ini`: `control_plane.migrate` builds the Alembic config in code so
migrations work the same from a checkout and from an installed wheel.
"""
