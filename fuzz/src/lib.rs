//! Checks shared by the fuzz targets (`fuzz_targets/`).

pub mod validate_step;
