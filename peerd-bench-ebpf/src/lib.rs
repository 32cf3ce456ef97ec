#![no_std]
//! The benchmark's eBPF programs live in the binary target (`src/main.rs`), built by
//! `peerd-bench/build.rs`; this library is empty and exists so `peerd-bench` can name the crate
//! as a build dependency.
