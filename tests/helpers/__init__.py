"""Helpers the tests share (`from helpers.dicoms import write_dicom`): the one DICOM writer,
small images, the stand-in encoder, run folders, checkpoints, tiny encoders, store plans and
the check for system tools. Fixtures among them are made available by tests/conftest.py."""
