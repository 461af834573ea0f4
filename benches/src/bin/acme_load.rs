//! `acme-load DIRECTORY_URL ROOT_PEM [CONCURRENCY] [TOTAL]`: complete ACME flows against any
//! server in an always-valid test mode; prints orders/s and latency percentiles.
#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: acme-load DIRECTORY_URL ROOT_PEM [CONCURRENCY=32] [TOTAL=1000]");
        return std::process::ExitCode::FAILURE;
    }
    let concurrency = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(32);
    let total = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let stats = benches::acme_load::run(&args[1], std::path::Path::new(&args[2]), concurrency, total).await;
    println!("{}", stats.line(&args[1]));
    if let Some(e) = &stats.first_error {
        eprintln!("first error: {e}");
    }
    if stats.failed > 0 { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS }
}
