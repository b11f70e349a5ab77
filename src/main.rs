//! The `drover` command line: `serve` runs the balancer, `probe` the resource agent on each host.

/// jemalloc rather than the system allocator: about 140 allocations per forwarded request,
/// most of them Pingora's, cost a tenth less CPU from its per-thread caches (BENCHMARKS.md,
/// issue 21), and its memory at rest stays where glibc's was.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "drover", version, about = "A load balancer for fleets of Ollama servers, built on Pingora")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the balancer (Ollama API under /api, OpenAI-compatible API under /v1).
    Serve {
        /// Configuration file [default: conf/drover.yaml when it exists, else built-in defaults]
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Take over the listening sockets of a running drover (send it SIGQUIT)
        #[arg(short, long)]
        upgrade: bool,
        /// Run in the background, writing pingora.pid_file
        #[arg(short, long)]
        daemon: bool,
        /// Validate the configuration, print every error, and exit (1 on errors)
        #[arg(short, long)]
        test: bool,
    },
    /// Run the resource agent on an Ollama host: GET /resources reports free RAM and VRAM.
    Probe {
        /// Address to listen on
        #[arg(long, default_value = "0.0.0.0:8005", value_name = "ADDR")]
        listen: String,
        /// Which memory to report
        #[arg(long, value_enum, default_value_t = drover::probe::DeviceMode::Auto)]
        device: drover::probe::DeviceMode,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve { config, upgrade, daemon, test } => {
            drover::serve::run(drover::serve::ServeArgs { config, upgrade, daemon, test })
        }
        Command::Probe { listen, device } => drover::probe::run(&listen, device),
    };
    std::process::exit(code);
}
