//! Integration tests of the engine, one binary with a module per concern.

mod broker;
mod cli;
mod client;
mod cluster;
mod storage;
