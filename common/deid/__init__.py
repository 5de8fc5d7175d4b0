"""De-identification: the Basic Profile of DICOM PS3.15 and Flywheel-format profiles.

Modules: `table` (the committed Table E.1-1), `basic` (the profile built from it), `uids`
(salted UID remapping and date offset), `flywheel` (profiles for fw-file-rs, checked when the
config is saved), `rewrite` (the Basic Profile applied with pydicom), `preview`, and `engine`
(`Deidentifier`, the entry point). This package is the one part of `common` that may import
pydicom and fw-file-rs; `table`, `basic`, `uids` and `flywheel` import neither pydicom nor
anything outside the stdlib, PyYAML and fw-file-rs, so `common.config` can use them.
"""
