//! Connector benchmark (written next).

fn main() {}
