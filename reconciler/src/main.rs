//! otherixd: the otherix control plane.
fn main() {}
