//! A small Redis client: RESP2 over TCP, a pool of connections, a timeout per call. It is
//! what drover's shared state needs (scripts, strings with expiry, pipelines) and no more.
//!
//! URLs: `redis://[[user]:password@]host[:port][/db]`. A connection that fails or times out
//! is dropped, never reused; the caller decides what a failure means (shared.rs falls back
//! to local state).

use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Idle connections kept for reuse.
const POOL: usize = 16;

/// Largest reply accepted (cached answers are the big ones).
const MAX_BULK: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    Status(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
    /// An error reply (`-ERR ...`): Redis answered, the command failed.
    Error(String),
}

impl Reply {
    pub(crate) fn int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// A `redis://` URL drover cannot use.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RedisUrlError {
    #[error("{url:?}: {source}")]
    NotAUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("{0:?}: expected redis://host:port[/db]")]
    Scheme(String),
    #[error("{0:?}: no host")]
    NoHost(String),
    #[error("{url:?}: the database must be a number")]
    Database {
        url: String,
        #[source]
        source: std::num::ParseIntError,
    },
}

/// A call that failed, with the server's address (its connection is dropped, not reused).
#[derive(Debug, thiserror::Error)]
#[error("redis {addr}: {failure}")]
pub(crate) struct RedisError {
    pub(crate) addr: String,
    #[source]
    pub(crate) failure: RedisFailure,
}

/// What went wrong on the connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RedisFailure {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed")]
    Closed,
    #[error("malformed reply")]
    Malformed,
    #[error("malformed reply {0:?}")]
    MalformedLine(String),
    #[error("reply of {0} bytes is over the limit")]
    TooLarge(usize),
    /// An error reply to the connection's AUTH or SELECT.
    #[error("{0}")]
    Refused(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

pub(crate) struct Redis {
    addr: String,
    auth: Option<(Option<String>, String)>,
    db: u32,
    timeout: Duration,
    idle: Mutex<Vec<BufReader<TcpStream>>>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redis({}/{})", self.addr, self.db)
    }
}

impl Redis {
    pub(crate) fn from_url(url: &str, timeout: Duration) -> Result<Redis, RedisUrlError> {
        let u = url::Url::parse(url).map_err(|source| RedisUrlError::NotAUrl { url: url.to_string(), source })?;
        if u.scheme() != "redis" {
            return Err(RedisUrlError::Scheme(url.to_string()));
        }
        let host = u.host_str().filter(|h| !h.is_empty()).ok_or_else(|| RedisUrlError::NoHost(url.to_string()))?;
        let addr = format!("{host}:{}", u.port().unwrap_or(6379));
        let auth = u.password().map(|p| ((!u.username().is_empty()).then(|| u.username().to_string()), p.to_string()));
        let db = match u.path().trim_start_matches('/') {
            "" => 0,
            d => d.parse().map_err(|source| RedisUrlError::Database { url: url.to_string(), source })?,
        };
        Ok(Redis { addr, auth, db, timeout, idle: Mutex::new(Vec::new()) })
    }

    /// The address, for messages (no credentials).
    pub(crate) fn address(&self) -> &str {
        &self.addr
    }

    /// One command.
    pub(crate) async fn query(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let mut replies = self.pipeline(&[args.to_vec()]).await?;
        Ok(replies.remove(0))
    }

    /// Several commands in one round trip; one reply each, in order.
    pub(crate) async fn pipeline(&self, commands: &[Vec<&[u8]>]) -> Result<Vec<Reply>, RedisError> {
        let mut out = Vec::new();
        for c in commands {
            encode(&mut out, c);
        }
        let run = async {
            let pooled = self.idle.lock().unwrap().pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => self.connect().await?,
            };
            conn.get_mut().write_all(&out).await?;
            let mut replies = Vec::with_capacity(commands.len());
            for _ in commands {
                replies.push(read_reply(&mut conn).await?);
            }
            let mut idle = self.idle.lock().unwrap();
            if idle.len() < POOL {
                idle.push(conn);
            }
            Ok(replies)
        };
        let result = tokio::time::timeout(self.timeout, run)
            .await
            .unwrap_or(Err(RedisFailure::Timeout(self.timeout)))
            .map_err(|failure| RedisError { addr: self.addr.clone(), failure });
        if result.is_err() {
            // The others were opened before the failure too (a restarted Redis closed them all).
            self.idle.lock().unwrap().clear();
        }
        result
    }

    async fn connect(&self) -> Result<BufReader<TcpStream>, RedisFailure> {
        let stream = TcpStream::connect(&self.addr).await?;
        let _ = stream.set_nodelay(true);
        let mut conn = BufReader::new(stream);
        let mut hello: Vec<Vec<u8>> = Vec::new();
        if let Some((user, password)) = &self.auth {
            hello.push(match user {
                Some(u) => cmd(&[b"AUTH", u.as_bytes(), password.as_bytes()]),
                None => cmd(&[b"AUTH", password.as_bytes()]),
            });
        }
        if self.db != 0 {
            hello.push(cmd(&[b"SELECT", self.db.to_string().as_bytes()]));
        }
        for c in hello {
            conn.get_mut().write_all(&c).await?;
            if let Reply::Error(e) = read_reply(&mut conn).await? {
                return Err(RedisFailure::Refused(e));
            }
        }
        Ok(conn)
    }
}

fn cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&mut out, args);
    out
}

/// A command as a RESP array of bulk strings.
fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

async fn read_line(conn: &mut BufReader<TcpStream>) -> Result<String, RedisFailure> {
    let mut line = Vec::new();
    let n = conn.read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Err(RedisFailure::Closed);
    }
    if !line.ends_with(b"\r\n") {
        return Err(RedisFailure::Malformed);
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| RedisFailure::Malformed)
}

fn read_reply(conn: &mut BufReader<TcpStream>) -> futures::future::BoxFuture<'_, Result<Reply, RedisFailure>> {
    Box::pin(async move {
        let line = read_line(conn).await?;
        let (kind, rest) = line.split_at(1.min(line.len()));
        let number = || rest.parse::<i64>().map_err(|_| RedisFailure::MalformedLine(line.clone()));
        Ok(match kind {
            "+" => Reply::Status(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(number()?),
            "$" => {
                let n = number()?;
                if n < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let n = n as usize;
                if n > MAX_BULK {
                    return Err(RedisFailure::TooLarge(n));
                }
                let mut buf = vec![0; n + 2];
                conn.read_exact(&mut buf).await?;
                buf.truncate(n);
                Reply::Bulk(Some(buf))
            }
            "*" => {
                let n = number()?;
                if n < 0 {
                    return Ok(Reply::Array(None));
                }
                let mut items = Vec::with_capacity(n.min(1024) as usize);
                for _ in 0..n {
                    items.push(read_reply(conn).await?);
                }
                Reply::Array(Some(items))
            }
            _ => return Err(RedisFailure::MalformedLine(line.clone())),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let r = Redis::from_url("redis://:pw@10.0.0.5:6380/2", Duration::from_secs(1)).unwrap();
        assert_eq!((r.addr.as_str(), r.db), ("10.0.0.5:6380", 2));
        assert_eq!(r.auth, Some((None, "pw".to_string())));
        assert_eq!(Redis::from_url("redis://localhost", Duration::from_secs(1)).unwrap().addr, "localhost:6379");
        let e = Redis::from_url("http://x", Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.to_string(), r#""http://x": expected redis://host:port[/db]"#);
        let e = Redis::from_url("redis://x/db", Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.to_string(), r#""redis://x/db": the database must be a number"#);
        assert!(std::error::Error::source(&e).is_some(), "the number's parse error is the cause");
        assert!(!format!("{r:?}").contains("pw"));
    }

    #[test]
    fn encodes_commands() {
        assert_eq!(cmd(&[b"GET", b"k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}
