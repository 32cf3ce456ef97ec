//! `peerd-cni`: the CNI plugin (CNI spec 1.0.0) that attaches containers to peerd's VPCs.
//! See peerd::cni and docs/workloads.md.
use std::{io::Read as _, process::ExitCode};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        eprintln!("peerd-cni: reading stdin: {e}");
    }
    let (out, code) = peerd::cni::main(&|k| std::env::var(k).ok(), &stdin);
    if !out.is_empty() {
        println!("{out}");
    }
    ExitCode::from(code)
}
