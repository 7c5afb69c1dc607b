"""The device model: latency units, backends that time them, the LUT file,
profiling, prediction and calibration."""
