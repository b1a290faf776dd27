"""Calibrated cameras -> one 3D skeleton per person, offline or live (docs/multiview.md).

Import the modules themselves (`calibration`, `rig`, `recordings`, ...): nothing here
loads OpenCV or a detector on import.
"""
