"""Reading: from a dataset's files to cohorts and pixels. No JAX, no torch, no synthetic data.

A cohort source (`sources`) turns a spec such as `manifest.csv` or `mias:DIR` into a `Cohort`
of bags, one per breast per exam (`cohort`, `manifest`, `mias`); DICOM header rules live in one
module (`dicom`); `imaging` reads one image to float [0, 1] with the breast on the left, and
`tiling` cuts it into tissue tiles (`tiling_original` holds the original code's preset);
`pseudonym` replaces ids by keyed hashes.
"""
