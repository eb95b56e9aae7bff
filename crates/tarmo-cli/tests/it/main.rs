//! End-to-end tests of the real `tarmo` binary over real sockets. One test
//! binary; each test has its own data directory and port.

mod access;
mod automations;
mod common;
mod consent;
mod ingest;
mod network;
mod openapi;
mod processors;
mod rights;
mod segments;
mod signals;
mod trust;
