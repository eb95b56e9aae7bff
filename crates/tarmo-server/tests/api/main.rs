//! The HTTP API tested in process: one test binary (linking dominates),
//! each test on an application of its own (`helpers::spawn_app`).

mod helpers;
mod processors;
mod segments;
