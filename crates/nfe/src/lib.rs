//! Invoice domain.
