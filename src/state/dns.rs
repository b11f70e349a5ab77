//! Servers found by DNS: `servers: [{ dns: "ollama.ai.svc.cluster.local:11434" }]` (a
//! headless Service, or any name with several addresses) is one server per address,
//! resolved at start and again every `load_balancer.dns_interval`.
//!
//! When a name's addresses change, the fleet is rebuilt as a store reload rebuilds it
//! (reload.rs: `Reloader::rediscovered`): a new address is a new server, with its own
//! health checks; a departed one leaves the fleet, and requests already on it finish
//! there (they hold the snapshot they started with). A failed lookup (timeout, SERVFAIL)
//! keeps the last addresses; the health checks judge them meanwhile. A name that no
//! longer exists (NXDOMAIN, or no records) has no servers.
//!
//! The system's resolver is used (getaddrinfo: /etc/resolv.conf, search domains, /etc/hosts),
//! unless `load_balancer.dns_resolver` names a nameserver, which is asked directly for A
//! and AAAA records (UDP, TCP when the answer is truncated).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::reload::Reloader;
use crate::config::{DnsServer, ServerSpec, Settings};
use crate::protocol::dns::{self, Answer, DnsError};

/// How one lookup ended: the addresses (none: the name is gone), or a failure that says
/// nothing about them.
type Lookup = Result<Vec<IpAddr>, LookupError>;

/// A lookup that failed: it says nothing about the name's addresses.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LookupError {
    /// The system's resolver failed.
    #[error("{0}")]
    System(#[source] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The name cannot be asked for.
    #[error("{0}")]
    Name(#[from] DnsError),
    /// The nameserver named by `load_balancer.dns_resolver` failed.
    #[error("{nameserver}: {source}")]
    Nameserver {
        nameserver: SocketAddr,
        #[source]
        source: ExchangeError,
    },
}

/// What went wrong asking a nameserver directly.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Answer(#[from] DnsError),
    /// The server failed (SERVFAIL, REFUSED ...), in `Answer::Failed`'s words.
    #[error("{0}")]
    Failed(String),
    #[error("truncated over TCP")]
    Truncated,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Finds a name's addresses.
pub(crate) struct Resolver {
    nameserver: Option<SocketAddr>,
    timeout: Duration,
}

impl Resolver {
    pub(crate) fn new(nameserver: Option<SocketAddr>, timeout: Duration) -> Resolver {
        Resolver { nameserver, timeout }
    }

    /// The name's addresses, sorted and without repeats.
    pub(crate) async fn addresses(&self, host: &str, port: u16) -> Lookup {
        let mut ips = match self.nameserver {
            None => system(host, port, self.timeout).await?,
            Some(ns) => {
                let (v4, v6) =
                    tokio::join!(ask(ns, host, dns::A, self.timeout), ask(ns, host, dns::AAAA, self.timeout));
                match (v4, v6) {
                    (Ok(mut a), Ok(b)) => {
                        a.extend(b);
                        a
                    }
                    // One family failing while the other answered: the answer stands.
                    (Ok(a), Err(_)) | (Err(_), Ok(a)) if !a.is_empty() => a,
                    (Err(e), _) | (_, Err(e)) => return Err(e),
                }
            }
        };
        ips.sort();
        ips.dedup();
        Ok(ips)
    }
}

/// Through the system's resolver. getaddrinfo cannot tell "no such name" from a failure,
/// so both keep the last addresses.
async fn system(host: &str, port: u16, timeout: Duration) -> Lookup {
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => Ok(addrs.map(|a| a.ip()).collect()),
        Ok(Err(e)) => Err(LookupError::System(e)),
        Err(_) => Err(LookupError::Timeout(timeout)),
    }
}

/// Asks `nameserver` for `host`'s records of one type: over UDP, again over TCP when cut short.
async fn ask(nameserver: SocketAddr, host: &str, qtype: u16, timeout: Duration) -> Lookup {
    static NEXT_ID: AtomicU16 = AtomicU16::new(0);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed) ^ (seed as u16);
    let query = dns::query(id, host, qtype)?;
    let exchange = async {
        let local: SocketAddr = if nameserver.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let socket = tokio::net::UdpSocket::bind(local).await?;
        socket.connect(nameserver).await?;
        socket.send(&query).await?;
        let mut buf = vec![0u8; dns::UDP_PAYLOAD as usize];
        loop {
            let n = socket.recv(&mut buf).await?;
            // A stray datagram (another query's late answer) is not ours: wait for ours.
            match dns::answer(id, &buf[..n]) {
                Ok(Answer::Truncated) => return over_tcp(nameserver, &query, id).await,
                Ok(answer) => return Ok(answer),
                Err(_) => continue,
            }
        }
    };
    let failed = |source| Err(LookupError::Nameserver { nameserver, source });
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(Answer::Addresses(ips))) => Ok(ips),
        Ok(Ok(Answer::NoSuchName)) => Ok(Vec::new()),
        Ok(Ok(Answer::Failed(why))) => failed(ExchangeError::Failed(why)),
        Ok(Ok(Answer::Truncated)) => failed(ExchangeError::Truncated),
        Ok(Err(e)) => failed(e),
        Err(_) => failed(ExchangeError::Timeout(timeout)),
    }
}

async fn over_tcp(nameserver: SocketAddr, query: &[u8], id: u16) -> Result<Answer, ExchangeError> {
    let mut stream = tokio::net::TcpStream::connect(nameserver).await?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await? as usize;
    let mut msg = vec![0u8; len];
    stream.read_exact(&mut msg).await?;
    Ok(dns::answer(id, &msg)?)
}

/// The `dns:` entries and the addresses last found for each.
pub(crate) struct Discovery {
    entries: Vec<DnsServer>,
    resolver: Resolver,
    found: Mutex<Vec<Vec<IpAddr>>>,
}

impl Discovery {
    pub(crate) fn new(settings: &Settings) -> Discovery {
        let lb = &settings.load_balancer;
        Discovery {
            entries: settings.dns_servers.clone(),
            resolver: Resolver::new(lb.dns_resolver, lb.health_check_timeout.max(Duration::from_secs(2))),
            found: Mutex::new(vec![Vec::new(); settings.dns_servers.len()]),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Resolves every name once; true when some name's addresses changed.
    pub(crate) async fn refresh(&self) -> bool {
        let lookups =
            futures::future::join_all(self.entries.iter().map(|e| self.resolver.addresses(&e.host, e.port))).await;
        let mut found = self.found.lock().unwrap();
        let mut changed = false;
        for ((entry, lookup), known) in self.entries.iter().zip(lookups).zip(found.iter_mut()) {
            match lookup {
                Ok(ips) if ips != *known => {
                    log::info!("dns {}:{}: {} ({} before)", entry.host, entry.port, shown(&ips), shown(known));
                    *known = ips;
                    changed = true;
                }
                Ok(_) => {}
                Err(e) => {
                    log::warn!("dns {}:{}: lookup failed ({e}); keeping {}", entry.host, entry.port, shown(known))
                }
            }
        }
        changed
    }

    /// One server per address found, with its entry's settings.
    pub(crate) fn servers(&self) -> Vec<ServerSpec> {
        let found = self.found.lock().unwrap();
        self.entries.iter().zip(found.iter()).flat_map(|(entry, ips)| ips.iter().map(|ip| entry.at(*ip))).collect()
    }
}

fn shown(ips: &[IpAddr]) -> String {
    if ips.is_empty() {
        return "no addresses".into();
    }
    ips.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
}

/// Resolves the names every `dns_interval` and rebuilds the fleet when the addresses change.
pub(crate) struct DnsService {
    pub(crate) discovery: Arc<Discovery>,
    pub(crate) reloader: Arc<Reloader>,
    pub(crate) interval: Duration,
}

#[async_trait]
impl BackgroundService for DnsService {
    /// Added by serve.rs only when some `dns:` server is configured.
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {
                    if self.discovery.refresh().await {
                        self.reloader.rediscovered(self.discovery.servers()).await;
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A nameserver on loopback answering `ips` for any A query (and nothing for AAAA).
    async fn nameserver(ips: Vec<[u8; 4]>, rcode: u8) -> SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let q = &buf[..n];
                let qend = 12 + q[12..].iter().position(|b| *b == 0).unwrap() + 5;
                let qtype = u16::from_be_bytes([q[qend - 4], q[qend - 3]]);
                let records: Vec<[u8; 4]> = if qtype == dns::A { ips.clone() } else { Vec::new() };
                let mut m = q[..2].to_vec();
                m.extend_from_slice(&[0x81, 0x80 | rcode, 0, 1]);
                m.extend_from_slice(&(records.len() as u16).to_be_bytes());
                m.extend_from_slice(&[0, 0, 0, 0]);
                m.extend_from_slice(&q[12..qend]);
                for ip in records {
                    m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
                    m.extend_from_slice(&ip);
                }
                let _ = socket.send_to(&m, from).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_nameserver_is_asked_directly() {
        let ns = nameserver(vec![[10, 0, 0, 2], [10, 0, 0, 1], [10, 0, 0, 2]], 0).await;
        let r = Resolver::new(Some(ns), Duration::from_secs(2));
        let ips = r.addresses("ollama.ai.svc.cluster.local", 11434).await.unwrap();
        assert_eq!(ips, ["10.0.0.1".parse::<IpAddr>().unwrap(), "10.0.0.2".parse().unwrap()], "sorted, no repeats");
        let gone = nameserver(vec![], 3).await;
        assert_eq!(
            Resolver::new(Some(gone), Duration::from_secs(2)).addresses("x.y", 1).await.unwrap(),
            Vec::<IpAddr>::new()
        );
        let failing = nameserver(vec![], 2).await;
        let e = Resolver::new(Some(failing), Duration::from_secs(2)).addresses("x.y", 1).await.unwrap_err();
        assert_eq!(e.to_string(), format!("{failing}: response code 2"));
        assert!(std::error::Error::source(&e).is_some(), "the nameserver's failure is the cause");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_nameserver_is_a_failure_at_the_timeout() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let r = Resolver::new(Some(silent.local_addr().unwrap()), Duration::from_millis(200));
        let t = tokio::time::Instant::now();
        assert!(r.addresses("x.y", 1).await.is_err());
        assert_eq!(t.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test]
    async fn the_system_resolver_reads_hosts() {
        let r = Resolver::new(None, Duration::from_secs(2));
        let ips = r.addresses("localhost", 11434).await.unwrap();
        assert!(ips.iter().all(IpAddr::is_loopback) && !ips.is_empty(), "{ips:?}");
    }
}
