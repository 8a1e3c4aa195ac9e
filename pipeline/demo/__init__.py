"""The built-in synthetic demo cohort: head-MRI phantoms (phantom.py) written as DICOM series
(dicom_writer.py) with labels and patients by ``python -m pipeline demo-data`` (cohort.py)."""
