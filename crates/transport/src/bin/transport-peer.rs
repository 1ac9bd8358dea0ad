//! `transport-peer`: the scripted peer process of the transport's tests and benchmarks
//! (see `transport::peer`). Exit status 0 when its role completed, 1 on a transport error,
//! 2 on bad arguments. The cluster's secret (for `--path tcp`) comes from `GPUCLUSTER_SECRET`,
//! never from the command line.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match transport::peer::PeerArgs::parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("transport-peer: {e}");
            return ExitCode::from(2);
        }
    };
    match transport::peer::run(&parsed) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("transport-peer: {e}");
            ExitCode::from(1)
        }
    }
}
