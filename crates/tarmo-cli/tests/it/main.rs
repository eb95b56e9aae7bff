//! End-to-end tests of the real `tarmo` binary over real sockets. One test
//! binary; each test has its own data directory and port.

mod access;
mod automations;
mod backup;
mod common;
mod consent;
mod console;
mod demo;
mod faults;
mod imports;
mod ingest;
mod master_key;
mod network;
mod openapi;
mod pg_faults;
mod pg_nodes;
mod prefcenter;
mod processors;
mod rights;
mod segments;
mod signals;
mod trust;
