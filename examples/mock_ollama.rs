//! The tests' mock Ollama server as a program, for the Python client tests and manual trials.
//!
//! Usage: mock_ollama [ADDR:]PORT MODEL[,MODEL...] [CHUNK_DELAY_MS] [CHUNKS] [DROP_AFTER]
//! (ADDR defaults to 127.0.0.1; the container tests run it on 0.0.0.0 inside a container.
//! With DROP_AFTER, every stream breaks after that many lines, as a server that dies.)

#[path = "../tests/support/mock_ollama.rs"]
mod mock_ollama;

use std::time::Duration;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: mock_ollama [ADDR:]PORT MODEL[,MODEL...] [CHUNK_DELAY_MS] [CHUNKS] [DROP_AFTER]");
        std::process::exit(2);
    }
    let models: Vec<&str> = args[2].split(',').collect();
    let at = if args[1].contains(':') { args[1].clone() } else { format!("127.0.0.1:{}", args[1]) };
    let mock = mock_ollama::MockOllama::start_at(&at, "mock", &models).await;
    let delay = args.get(3).and_then(|d| d.parse().ok()).unwrap_or(20);
    let chunks = args.get(4).and_then(|d| d.parse().ok()).unwrap_or(4);
    mock.set_stream(chunks, Duration::from_millis(delay));
    if let Some(lines) = args.get(5).and_then(|d| d.parse().ok()) {
        mock.state.drop_after.store(lines, std::sync::atomic::Ordering::SeqCst);
        mock.set_mode(mock_ollama::Mode::DropMidStream);
    }
    println!("mock Ollama on {} serving {}", mock.url, args[2]);
    std::future::pending::<()>().await;
}
