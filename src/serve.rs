//! `drover serve`: load the settings, build the fleet, and run the Pingora server.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;

use crate::config::{Env, Settings};
use crate::fleet::Fleet;
use crate::health::HealthChecker;
use crate::proxy::Drover;

/// Command-line switches of `drover serve`.
pub struct ServeArgs {
    pub config: Option<PathBuf>,
    pub upgrade: bool,
    pub daemon: bool,
    pub test: bool,
}

/// The config file to read: the one named, else conf/drover.yaml when present, else none (defaults).
fn config_path(named: Option<PathBuf>) -> Option<PathBuf> {
    named.or_else(|| {
        let default = PathBuf::from("conf/drover.yaml");
        default.exists().then_some(default)
    })
}

/// Runs the balancer; returns the process exit code.
pub fn run(args: ServeArgs) -> i32 {
    let path = config_path(args.config);
    let settings = match Settings::load(path.as_deref(), &Env::from_process()) {
        Ok(s) => s,
        Err(errors) => {
            let source = path.as_ref().map_or("defaults".into(), |p| p.display().to_string());
            eprintln!("drover: configuration errors in {source}:");
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            return 1;
        }
    };
    if args.test {
        println!(
            "drover: configuration OK ({}): {} servers, {} routes, listening on {}",
            settings.source.as_ref().map_or("defaults".into(), |p| p.display().to_string()),
            settings.servers.len(),
            settings.routes.len(),
            settings.listen
        );
        return 0;
    }

    let conf = ServerConf {
        threads: settings.threads,
        grace_period_seconds: Some(settings.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(5),
        upgrade_sock: settings.upgrade_sock.clone(),
        pid_file: settings.pid_file.clone(),
        daemon: args.daemon,
        ..ServerConf::default()
    };
    let opt = Opt { upgrade: args.upgrade, daemon: args.daemon, nocapture: false, test: false, conf: None };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let fleet = Arc::new(ArcSwap::from_pointee(Fleet::build(&settings, None)));
    log::info!(
        "drover {} listening on {} with {} servers and {} virtual models",
        env!("CARGO_PKG_VERSION"),
        settings.listen,
        fleet.load().servers.len(),
        fleet.load().routes.len()
    );
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Drover::new(&settings, fleet.clone()));
    proxy.add_tcp(&settings.listen.to_string());
    server.add_service(proxy);
    server.add_service(background_service("health checks", HealthChecker::new(fleet, &settings.load_balancer)));
    server.run_forever()
}
