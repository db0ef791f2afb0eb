//! Local Google Cloud emulators.
