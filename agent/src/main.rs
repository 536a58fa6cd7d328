//! otherix-agent: the otherix node agent.
fn main() {}
