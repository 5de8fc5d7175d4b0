"""`python -m cli`: the `dicom-connector` script, as all-in-one starts its children."""

from cli.main import app

app()
