//! Fuzz targets for the readers of untrusted input (work in progress).
