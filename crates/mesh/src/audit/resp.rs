//! Just enough of the Redis protocol (RESP2) for the audit checkpoint: a
//! blocking connection (the trail's writer thread is not async), commands
//! sent pipelined, replies read back. `redis://[user:password@]host[:port][/db]`
//! and `unix:///path[?db=N]`; TLS (`rediss://`) is not spoken here.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// How long connecting, sending or waiting for a reply may take.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Longest reply accepted (a checkpoint is a few hundred bytes).
const MAX_BULK: usize = 64 * 1024;

/// A reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Value {
    /// `$-1` or `*-1`.
    Nil,
    /// `+…`.
    Status(String),
    /// `:…`.
    Int(i64),
    /// `$…`.
    Bulk(Vec<u8>),
    /// `*…`.
    Array(Vec<Value>),
    /// `-…`.
    Error(String),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// One connection.
pub struct Conn {
    stream: BufReader<Stream>,
}

/// Where and how to connect, from a URL.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    address: Address,
    user: Option<String>,
    password: Option<String>,
    db: Option<u32>,
}

#[derive(Debug, PartialEq, Eq)]
enum Address {
    Tcp(String),
    Unix(String),
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse(url: &str) -> Result<Target, String> {
    if url.starts_with("rediss://") {
        return Err("TLS (rediss://) is not supported for the audit checkpoint".into());
    }
    if let Some(rest) = url.strip_prefix("unix://") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut db = None;
        let mut password = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("db", n)) => db = Some(n.parse().map_err(|_| format!("bad db `{n}`"))?),
                Some(("pass" | "password", p)) => password = Some(percent_decode(p)),
                _ => {}
            }
        }
        return Ok(Target {
            address: Address::Unix(path.to_owned()),
            user: None,
            password,
            db,
        });
    }
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| format!("`{url}` is not a redis:// or unix:// URL"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (credentials, host) = match authority.rsplit_once('@') {
        Some((c, h)) => (Some(c), h),
        None => (None, authority),
    };
    let (user, password) = match credentials {
        None => (None, None),
        Some(c) => match c.split_once(':') {
            Some((u, p)) => (
                Some(percent_decode(u)).filter(|u| !u.is_empty()),
                Some(percent_decode(p)),
            ),
            None => (Some(percent_decode(c)).filter(|u| !u.is_empty()), None),
        },
    };
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    let has_port = match host.rsplit_once(']') {
        Some((_, after)) => after.starts_with(':'),
        None => host.contains(':'),
    };
    let address = if has_port {
        host.to_owned()
    } else {
        format!("{host}:6379")
    };
    let path = path.split('?').next().unwrap_or_default();
    let db = match path {
        "" => None,
        n => Some(n.parse().map_err(|_| format!("bad database `{n}`"))?),
    };
    Ok(Target {
        address: Address::Tcp(address),
        user,
        password,
        db,
    })
}

fn io(e: std::io::Error) -> String {
    e.to_string()
}

impl Conn {
    /// Connects, authenticates and selects the database `url` names.
    pub fn connect(url: &str) -> Result<Self, String> {
        let target = parse(url)?;
        let stream = match &target.address {
            Address::Tcp(address) => {
                let mut last = format!("{address}: no address");
                let mut connected = None;
                for addr in address.to_socket_addrs().map_err(io)? {
                    match TcpStream::connect_timeout(&addr, TIMEOUT) {
                        Ok(s) => {
                            connected = Some(s);
                            break;
                        }
                        Err(e) => last = format!("{addr}: {e}"),
                    }
                }
                let s = connected.ok_or(last)?;
                s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
                s.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
            Address::Unix(path) => {
                let s = UnixStream::connect(path).map_err(|e| format!("{path}: {e}"))?;
                s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
                s.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
                Stream::Unix(s)
            }
        };
        let mut conn = Self {
            stream: BufReader::new(stream),
        };
        let mut setup: Vec<Vec<&[u8]>> = Vec::new();
        match (&target.user, &target.password) {
            (Some(u), Some(p)) => setup.push(vec![b"AUTH", u.as_bytes(), p.as_bytes()]),
            (None, Some(p)) => setup.push(vec![b"AUTH", p.as_bytes()]),
            _ => {}
        }
        let db = target.db.map(|d| d.to_string());
        if let Some(db) = &db {
            setup.push(vec![b"SELECT", db.as_bytes()]);
        }
        if !setup.is_empty() {
            for reply in conn.pipeline(&setup)? {
                if let Value::Error(e) = reply {
                    return Err(e);
                }
            }
        }
        Ok(conn)
    }

    /// Sends `commands` at once and reads one reply for each.
    pub fn pipeline(&mut self, commands: &[Vec<&[u8]>]) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        for command in commands {
            out.extend_from_slice(format!("*{}\r\n", command.len()).as_bytes());
            for arg in command {
                out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                out.extend_from_slice(arg);
                out.extend_from_slice(b"\r\n");
            }
        }
        let stream = self.stream.get_mut();
        stream.write_all(&out).map_err(io)?;
        stream.flush().map_err(io)?;
        commands.iter().map(|_| self.read_value(0)).collect()
    }

    fn read_line(&mut self) -> Result<String, String> {
        let mut line = Vec::new();
        (&mut self.stream)
            .take(MAX_BULK as u64)
            .read_until(b'\n', &mut line)
            .map_err(io)?;
        if !line.ends_with(b"\r\n") {
            return Err("the connection closed mid-reply".into());
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| "a reply line is not UTF-8".to_owned())
    }

    fn read_value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > 4 {
            return Err("a reply nests too deeply".into());
        }
        let line = self.read_line()?;
        let (kind, rest) = line.split_at(line.len().min(1));
        let number = || {
            rest.parse::<i64>()
                .map_err(|_| format!("bad reply `{line}`"))
        };
        Ok(match kind {
            "+" => Value::Status(rest.to_owned()),
            "-" => Value::Error(rest.to_owned()),
            ":" => Value::Int(number()?),
            "$" => {
                let n = number()?;
                if n < 0 {
                    return Ok(Value::Nil);
                }
                let n = n as usize;
                if n > MAX_BULK {
                    return Err(format!("a reply of {n} bytes is too long"));
                }
                let mut buf = vec![0; n + 2];
                self.stream.read_exact(&mut buf).map_err(io)?;
                buf.truncate(n);
                Value::Bulk(buf)
            }
            "*" => {
                let n = number()?;
                if n < 0 {
                    return Ok(Value::Nil);
                }
                if n > 64 {
                    return Err(format!("a reply of {n} elements is too long"));
                }
                (0..n)
                    .map(|_| self.read_value(depth + 1))
                    .collect::<Result<_, _>>()
                    .map(Value::Array)?
            }
            _ => return Err(format!("bad reply `{line}`")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(
            parse("redis://127.0.0.1:6379").unwrap(),
            Target {
                address: Address::Tcp("127.0.0.1:6379".into()),
                user: None,
                password: None,
                db: None
            }
        );
        let t = parse("redis://:p%40ss@redis.svc/2").unwrap();
        assert_eq!(t.address, Address::Tcp("redis.svc:6379".into()));
        assert_eq!(
            (t.user, t.password, t.db),
            (None, Some("p@ss".into()), Some(2))
        );
        let t = parse("redis://amaos:pw@[::1]:7000").unwrap();
        assert_eq!(t.address, Address::Tcp("[::1]:7000".into()));
        assert_eq!(t.user.as_deref(), Some("amaos"));
        let t = parse("unix:///run/redis.sock?db=3").unwrap();
        assert_eq!(t.address, Address::Unix("/run/redis.sock".into()));
        assert_eq!(t.db, Some(3));
        assert!(parse("rediss://host").is_err());
        assert!(parse("http://host").is_err());
    }
}
