"""Instruments of a run: task probes, calibration and text metrics, sampling."""
