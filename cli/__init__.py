"""The `dicom-connector` command line: deployables and the admin client."""
