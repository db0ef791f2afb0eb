//! storage connector (in progress).
