// The floor proxy itself, shared by examples/passthrough.rs (the system allocator) and
// examples/passthrough_jemalloc.rs (drover's allocator). Included, not a module: an
// example is one crate.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;

struct Pass(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Pass {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        let backend = self.0.select(b"", 256).expect("a backend");
        Ok(Box::new(HttpPeer::new(backend, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: passthrough LISTEN THREADS BACKEND[,BACKEND...]");
        std::process::exit(2);
    }
    let threads: usize = args[2].parse().expect("THREADS is a number");
    let backends: Vec<&str> = args[3].split(',').collect();
    let conf = ServerConf { threads, ..ServerConf::default() };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let lb = LoadBalancer::try_from_iter(backends).expect("backend addresses");
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Pass(Arc::new(lb)));
    proxy.add_tcp(&args[1]);
    server.add_service(proxy);
    server.run_forever()
}
