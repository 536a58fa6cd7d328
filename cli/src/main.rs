//! otherix: the otherix command-line client.
fn main() {}
