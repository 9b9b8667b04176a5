//! `cargo run --release --example bench_env -- --game pong --envs 16 --threads 2 [--json]`:
//! the `gala-gpu bench env` command as a standalone program.
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: gala_gpu::env::cli::BenchEnvArgs,
}

fn main() -> std::process::ExitCode {
    match gala_gpu::env::cli::run_bench_env(&Cli::parse().args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
