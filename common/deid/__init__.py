"""De-identification: the Basic Profile of DICOM PS3.15 and Flywheel-format profiles.

Modules: `table` (the committed Table E.1-1), `basic` (the profile built from it), `uids`
(salted UID remapping and date offset), `flywheel` (profiles for fw-file-rs, checked when the
config is saved), `fast_rewrite` (the Basic Profile on explicit VR little endian bytes),
`rewrite` (the same with pydicom: the reference, and the path for other syntaxes), `preview`,
and `engine` (`Deidentifier`, the entry point; docs/deid.md). This package is the one part of
`common` that may import pydicom and fw-file-rs; `table`, `basic`, `uids`, `flywheel` and
`fast_rewrite` import no pydicom, so `common.config` can use them.
"""
