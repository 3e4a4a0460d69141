//! Measurement helpers for bench/run.sh. Each subcommand prints JSON on stdout.
//!
//!   stampede   open C connections, then fire N requests at once (pipelined over the
//!              connections) for each `--phase NAME=PATH` (`--phase sleep=MS` pauses);
//!              wall time, statuses, and the dev IdP's /stats delta per phase.
//!              `--addr A,B,C` spreads the connections over several brokers (a fleet).
//!   gen-config write a broker config with N credentials to stdout.
//!   startup    spawn a command, poll its TCP port, /healthz, its "serving" log line and
//!              optionally /readyz; report the delays from the spawn.
//!   observe    sample a process's CPU time and RSS once a second, then read the broker's
//!              JSON log: refreshes per second, CPU between refresh waves, IdP counters.
//!   meter      a forwarding HTTP/1.1 proxy in front of several IdPs (`--route NAME=ADDR`;
//!              `/NAME/token` goes to ADDR's `/token`) that counts the requests in flight
//!              across all of them; `GET /meter` answers the peak.
//!
//! Plain std/tokio and hand-written HTTP/1.1, so that the client is cheap and exact: it
//! counts every status and can put all requests on the wire at once.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        usage();
    }
    let command = args.remove(0);
    let opts = Opts::parse(args);
    match command.as_str() {
        "stampede" => stampede(&opts),
        "gen-config" => gen_config(&opts),
        "startup" => startup(&opts),
        "observe" => observe(&opts),
        "meter" => meter(&opts),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: tbbench stampede --addr A --connections C --requests N --phase NAME=PATH... [--header 'K: V'] [--idp URL]
       tbbench gen-config --count N --listen A --state-dir D --token-url URL... [--grant G] [--prefix P] [--max-concurrent K] [--refresh-token-file F] [--scope S]
       tbbench startup --addr A --log FILE [--ready-timeout SECS] [--keep] -- COMMAND...
       tbbench observe --pid P --seconds S --log FILE [--idp URL]... [--clk-tck 100] [--samples-out FILE]
       tbbench meter --listen A --route NAME=HOST:PORT..."
    );
    std::process::exit(2)
}

/// `--key value` pairs (keys may repeat), bare `--flag`s, and everything after `--`.
struct Opts {
    pairs: Vec<(String, String)>,
    rest: Vec<String>,
}

impl Opts {
    fn parse(args: Vec<String>) -> Opts {
        let mut pairs = Vec::new();
        let mut rest = Vec::new();
        let mut it = args.into_iter().peekable();
        while let Some(arg) = it.next() {
            if arg == "--" {
                rest.extend(it.by_ref());
                break;
            }
            let Some(key) = arg.strip_prefix("--") else {
                eprintln!("unexpected argument {arg}");
                usage();
            };
            let value = match it.peek() {
                Some(next) if !next.starts_with("--") => it.next().unwrap_or_default(),
                _ => "true".to_owned(),
            };
            pairs.push((key.to_owned(), value));
        }
        Opts { pairs, rest }
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    fn req(&self, key: &str) -> &str {
        self.get(key).unwrap_or_else(|| {
            eprintln!("missing --{key}");
            usage()
        })
    }
    fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> T {
        match self.get(key) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("--{key}: not a number: {v}");
                usage()
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 bits

/// Parses one complete response at the start of `b`: (status, bytes used, body range).
fn parse_response(b: &[u8]) -> Result<Option<(u16, usize, std::ops::Range<usize>)>, String> {
    let Some(head_len) = b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&b[..head_len]).map_err(|_| "non-UTF-8 response head")?;
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {:?}", head.lines().next()))?;
    let mut length = 0usize;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().map_err(|_| "bad content-length")?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked responses are not supported by this client".into());
        }
    }
    if b.len() < head_len + length {
        return Ok(None);
    }
    Ok(Some((
        status,
        head_len + length,
        head_len..head_len + length,
    )))
}

/// `"expires_in":N` from a token body.
fn expires_in(body: &[u8]) -> Option<u64> {
    let key = b"\"expires_in\":";
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = body[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// A blocking GET with `Connection: close`, for control traffic (stats, health).
fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>), String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    match parse_response(&buf)? {
        Some((status, _, body)) => Ok((status, buf[body].to_vec())),
        None => Err("truncated response".into()),
    }
}

/// `http://127.0.0.1:PORT[/...]` -> `127.0.0.1:PORT`.
fn host_port(url: &str) -> &str {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    rest.split('/').next().unwrap_or(rest)
}

fn idp_stats(url: &str) -> Value {
    match http_get(host_port(url), "/stats", Duration::from_secs(5)) {
        Ok((200, body)) => serde_json::from_slice(&body).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn counter(stats: &Value, key: &str) -> i64 {
    stats.get(key).and_then(Value::as_i64).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// stampede

struct ConnResult {
    index: usize,
    stream: tokio::net::TcpStream,
    statuses: Vec<u16>,
    /// When each response was complete, from the phase start.
    done: Vec<Duration>,
    min_expires_in: Option<u64>,
    error: Option<String>,
}

fn stampede(opts: &Opts) {
    let addrs: Vec<SocketAddr> = opts
        .req("addr")
        .split(',')
        .map(|a| a.parse().expect("--addr HOST:PORT[,HOST:PORT...]"))
        .collect();
    // Every broker accepts any loopback Host, so one Host header serves them all.
    let addr = addrs[0];
    let connections: usize = opts.num("connections", 1000);
    let requests: usize = opts.num("requests", 10_000);
    let parallel_connects: usize = opts.num("connect-parallel", 100);
    let timeout = Duration::from_secs(opts.num("timeout-secs", 60));
    let headers: String = opts
        .all("header")
        .iter()
        .map(|h| format!("{h}\r\n"))
        .collect();
    let phases: Vec<(String, String)> = opts
        .all("phase")
        .iter()
        .map(|p| {
            let (n, path) = p.split_once('=').expect("--phase NAME=PATH");
            (n.to_owned(), path.to_owned())
        })
        .collect();
    let idp = opts.get("idp").map(str::to_owned);
    assert!(
        connections > 0 && requests >= connections,
        "need requests >= connections > 0"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let connect_started = Instant::now();
        // Each new connection carries one request before it counts as open: that proves
        // the server accepted it (a connect alone only means the kernel queued it).
        let warm_path = phases
            .iter()
            .find(|(n, _)| n != "sleep")
            .map_or("/".to_owned(), |(_, p)| p.clone());
        let warm = format!("GET {warm_path} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n");
        let mut streams =
            connect_all(&addrs, connections, parallel_connects, warm.into_bytes()).await;
        eprintln!(
            "stampede: {connections} connections open in {} ms",
            connect_started.elapsed().as_millis()
        );
        for (name, path) in phases {
            // `--phase sleep=MS` pauses between phases (e.g. to let a token age).
            if name == "sleep" {
                let ms: u64 = path.parse().expect("--phase sleep=MILLISECONDS");
                tokio::time::sleep(Duration::from_millis(ms)).await;
                continue;
            }
            let before = idp.as_deref().map(idp_stats);
            let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n");
            let (result, back) = run_phase(streams, requests, request.into_bytes(), timeout).await;
            streams = back;
            let after = idp.as_deref().map(idp_stats);
            let mut out = result;
            out["phase"] = json!(name);
            out["path"] = json!(path);
            if let (Some(b), Some(a)) = (before, after) {
                out["idp_delta"] = json!({
                    "token_requests": counter(&a, "token_requests") - counter(&b, "token_requests"),
                    "refresh_grants": counter(&a, "refresh_grants") - counter(&b, "refresh_grants"),
                    "client_credentials_grants": counter(&a, "client_credentials_grants") - counter(&b, "client_credentials_grants"),
                    "reuse_detected": counter(&a, "reuse_detected") - counter(&b, "reuse_detected"),
                });
                out["idp_max_in_flight"] = json!(counter(&a, "max_in_flight"));
            }
            println!("{out}");
            // A short breath between phases so one phase's tail does not overlap the next.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// `count` connections, the i-th to `addrs[i % addrs.len()]`.
async fn connect_all(
    addrs: &[SocketAddr],
    count: usize,
    parallel: usize,
    warm: Vec<u8>,
) -> Vec<tokio::net::TcpStream> {
    // Bounded parallelism: connections the server has not accepted yet pile up in its
    // listen backlog, and an overflow costs 1 s SYN retransmits. Connecting is not what
    // is measured.
    let gate = Arc::new(tokio::sync::Semaphore::new(parallel));
    let warm = Arc::new(warm);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..count {
        let addr = addrs[i % addrs.len()];
        let gate = gate.clone();
        let warm = warm.clone();
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let mut last_error = String::new();
            for _attempt in 0..5 {
                match open_one(addr, &warm).await {
                    Ok(stream) => return (i, stream),
                    Err(e) => last_error = e,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("connect {addr}: {last_error}");
        });
    }
    let mut streams: Vec<Option<tokio::net::TcpStream>> = (0..count).map(|_| None).collect();
    while let Some(done) = set.join_next().await {
        let (i, s) = done.expect("connect task");
        streams[i] = Some(s);
    }
    streams.into_iter().map(|s| s.expect("stream")).collect()
}

async fn open_one(addr: SocketAddr, warm: &[u8]) -> Result<tokio::net::TcpStream, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    // Close with RST: thousands of TIME_WAIT ports would exhaust the ephemeral range
    // when the suite is run twice within a minute.
    socket.set_zero_linger().map_err(|e| e.to_string())?;
    let mut stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).ok();
    stream.write_all(warm).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(1024);
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if parse_response(&buf)?.is_some() {
                return Ok(());
            }
            if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("closed before answering".to_owned());
            }
        }
    })
    .await
    .map_err(|_| "no answer within 10 s".to_owned())?;
    answered.map(|()| stream)
}

async fn run_phase(
    streams: Vec<tokio::net::TcpStream>,
    requests: usize,
    request: Vec<u8>,
    timeout: Duration,
) -> (Value, Vec<tokio::net::TcpStream>) {
    let connections = streams.len();
    let (go_tx, go_rx) = tokio::sync::watch::channel::<Option<Instant>>(None);
    let request = Arc::new(request);
    let mut set = tokio::task::JoinSet::new();
    for (index, mut stream) in streams.into_iter().enumerate() {
        // Spread the requests over the connections; the extra ones are pipelined.
        let k = requests / connections + usize::from(index < requests % connections);
        let mut go = go_rx.clone();
        let request = request.clone();
        set.spawn(async move {
            let mut out = Vec::with_capacity(request.len() * k);
            for _ in 0..k {
                out.extend_from_slice(&request);
            }
            let start = *go
                .wait_for(Option::is_some)
                .await
                .expect("go")
                .as_ref()
                .expect("start");
            let write = stream.write_all(&out).await;
            let mut result = ConnResult {
                index,
                stream,
                statuses: Vec::with_capacity(k),
                done: Vec::with_capacity(k),
                min_expires_in: None,
                error: None,
            };
            if let Err(e) = write {
                result.error = Some(format!("write: {e}"));
                return result;
            }
            let read = tokio::time::timeout(timeout, read_responses(&mut result, k, start)).await;
            match read {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result.error = Some(e),
                Err(_) => result.error = Some("timed out".into()),
            }
            result
        });
    }
    // Let every task park on the start signal, so the phase starts with all of them ready.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    go_tx.send(Some(start)).expect("send go");
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut done: Vec<Duration> = Vec::with_capacity(requests);
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut min_expires_in: Option<u64> = None;
    let mut back: Vec<Option<tokio::net::TcpStream>> = (0..connections).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let r = joined.expect("connection task");
        for s in &r.statuses {
            *statuses.entry(s.to_string()).or_default() += 1;
        }
        done.extend_from_slice(&r.done);
        if let Some(e) = r.error {
            *errors.entry(e).or_default() += 1;
        }
        min_expires_in = match (min_expires_in, r.min_expires_in) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        back[r.index] = Some(r.stream);
    }
    done.sort();
    let wall = done.last().copied().unwrap_or_default();
    let pct = |p: f64| -> f64 {
        if done.is_empty() {
            return 0.0;
        }
        let i = ((done.len() as f64 * p).ceil() as usize).clamp(1, done.len()) - 1;
        done[i].as_secs_f64() * 1e3
    };
    let answered = done.len();
    let out = json!({
        "connections": connections,
        "requests": requests,
        "answered": answered,
        "wall_ms": wall.as_secs_f64() * 1e3,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "statuses": statuses,
        "errors": errors,
        "min_expires_in": min_expires_in,
    });
    (
        out,
        back.into_iter().map(|s| s.expect("stream back")).collect(),
    )
}

async fn read_responses(r: &mut ConnResult, k: usize, start: Instant) -> Result<(), String> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut used = 0usize;
    while r.statuses.len() < k {
        while r.statuses.len() < k {
            match parse_response(&buf[used..])? {
                Some((status, len, body)) => {
                    let body = &buf[used + body.start..used + body.end];
                    if status == 200
                        && let Some(e) = expires_in(body)
                    {
                        r.min_expires_in = Some(r.min_expires_in.map_or(e, |m| m.min(e)));
                    }
                    r.statuses.push(status);
                    r.done.push(start.elapsed());
                    used += len;
                }
                None => break,
            }
        }
        if r.statuses.len() == k {
            break;
        }
        if used > 0 {
            buf.drain(..used);
            used = 0;
        }
        buf.reserve(4096);
        let n = r
            .stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed after {} of {k} responses",
                r.statuses.len()
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// gen-config

fn gen_config(opts: &Opts) {
    let count: usize = opts.num("count", 1);
    let listen = opts.get("listen").unwrap_or("127.0.0.1:8656");
    let state_dir = opts.req("state-dir");
    let urls = opts.all("token-url");
    assert!(!urls.is_empty(), "--token-url URL (repeatable)");
    let grant = opts.get("grant").unwrap_or("client_credentials");
    let prefix = opts.get("prefix").unwrap_or("cred");
    let mut out = String::with_capacity(count * 200);
    out.push_str(&format!(
        "# Generated by tbbench gen-config: {count} credentials.\n[server]\nlisten = \"{listen}\"\n\n[state]\ndir = \"{state_dir}\"\n\n"
    ));
    if let Some(k) = opts.get("max-concurrent") {
        out.push_str(&format!("[idp]\nmax_concurrent = {k}\n\n"));
    }
    for i in 0..count {
        let name = if count == 1 {
            prefix.to_owned()
        } else {
            format!("{prefix}-{i:05}")
        };
        // Round-robin over the IdPs, so each lifetime gets the same share.
        let url = urls[i % urls.len()];
        out.push_str(&format!(
            "[credentials.{name}]\ngrant = \"{grant}\"\ntoken_url = \"{url}\"\nclient_id = \"dev-client\"\nclient_secret = \"dev-secret\"\n"
        ));
        if let Some(scope) = opts.get("scope") {
            out.push_str(&format!("scope = \"{scope}\"\n"));
        }
        if let Some(file) = opts.get("refresh-token-file") {
            out.push_str(&format!("refresh_token = {{ file = \"{file}\" }}\n"));
        }
        out.push('\n');
    }
    std::io::stdout()
        .write_all(out.as_bytes())
        .expect("write stdout");
}

// ---------------------------------------------------------------------------------------
// startup

fn startup(opts: &Opts) {
    let addr = opts.req("addr").to_owned();
    let sock: SocketAddr = addr.parse().expect("--addr HOST:PORT");
    let log_path = opts.req("log").to_owned();
    let ready_timeout: Option<f64> = opts
        .get("ready-timeout")
        .map(|v| v.parse().expect("seconds"));
    let keep = opts.get("keep").is_some();
    let Some((program, args)) = opts.rest.split_first() else {
        eprintln!("startup: give the command after --");
        usage();
    };
    let log = std::fs::File::create(&log_path).expect("create --log");

    let wall0 = SystemTime::now();
    let t0 = Instant::now();
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let pid = child.id();
    let fail = |child: &mut std::process::Child, what: &str| -> ! {
        let _ = child.kill();
        let _ = child.wait();
        let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(5).collect();
        eprintln!("startup: {what}; last log lines: {tail:?}");
        std::process::exit(1)
    };
    let since = |t: Instant| t.duration_since(t0).as_secs_f64() * 1e3;

    // Poll the port as fast as a connect can fail: a refused loopback connect takes µs.
    let connect_ms = loop {
        if std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(100)).is_ok() {
            break since(Instant::now());
        }
        if let Ok(Some(status)) = child.try_wait() {
            fail(&mut child, &format!("exited before listening ({status})"));
        }
        if t0.elapsed() > Duration::from_secs(30) {
            fail(&mut child, "not listening after 30 s");
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    let rss_at_connect_kb = proc_sample(pid).map_or(0, |s| s.rss_kb);
    let healthz_ms = loop {
        if let Ok((200, _)) = http_get(&addr, "/healthz", Duration::from_secs(2)) {
            break since(Instant::now());
        }
        if t0.elapsed() > Duration::from_secs(30) {
            fail(&mut child, "/healthz not 200 after 30 s");
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    // The daemon's own "serving" line, timestamped by the daemon.
    let mut serving_log_ms = Value::Null;
    while t0.elapsed() < Duration::from_secs(10) {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("token-broker serving")) {
            if let Some(ts) = serde_json::from_str::<Value>(line).ok().and_then(|v| {
                v.get("timestamp")
                    .and_then(Value::as_str)
                    .and_then(parse_rfc3339)
            }) {
                let start = wall0
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                serving_log_ms = json!((ts - start) * 1e3);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut ready_ms = Value::Null;
    let mut rss_at_ready_kb = Value::Null;
    let mut threads_at_ready = Value::Null;
    if let Some(limit) = ready_timeout {
        loop {
            if let Ok((200, _)) = http_get(&addr, "/readyz", Duration::from_secs(5)) {
                ready_ms = json!(since(Instant::now()));
                rss_at_ready_kb = json!(proc_sample(pid).map_or(0, |s| s.rss_kb));
                threads_at_ready = json!(threads(pid));
                break;
            }
            if t0.elapsed().as_secs_f64() > limit {
                break;
            }
            // Not faster: with 10,000 credentials each /readyz costs the broker
            // milliseconds of CPU, and a tight poll would slow the very start-up it times.
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    println!(
        "{}",
        json!({
            "pid": pid,
            "connect_ms": connect_ms,
            "healthz_ms": healthz_ms,
            "serving_log_ms": serving_log_ms,
            "ready_ms": ready_ms,
            "rss_at_connect_kb": rss_at_connect_kb,
            "rss_at_ready_kb": rss_at_ready_kb,
            "threads_at_ready": threads_at_ready,
        })
    );
    if !keep {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `2026-01-02T03:04:05.123456Z` -> seconds since the epoch.
fn parse_rfc3339(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = t.next()?.parse().ok()?;
    // Days from civil (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) as f64 + ss)
}

// ---------------------------------------------------------------------------------------
// observe

struct Sample {
    wall: f64,
    ticks: u64,
    rss_kb: u64,
    hwm_kb: u64,
}

fn proc_sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(Sample {
        wall: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64(),
        ticks: utime + stime,
        rss_kb: kb("VmRSS:"),
        hwm_kb: kb("VmHWM:"),
    })
}

fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn observe(opts: &Opts) {
    let pid: u32 = opts.num("pid", 0);
    let seconds: u64 = opts.num("seconds", 30);
    let clk: f64 = opts.num("clk-tck", 100.0);
    let log_path = opts.req("log");
    let idps: Vec<&str> = opts.all("idp");

    let idp_before: Vec<Value> = idps.iter().map(|u| idp_stats(u)).collect();
    let mut samples: Vec<Sample> = Vec::new();
    let t0 = Instant::now();
    for i in 0..=seconds {
        let due = t0 + Duration::from_secs(i);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        match proc_sample(pid) {
            Some(s) => samples.push(s),
            None => {
                eprintln!("observe: process {pid} is gone");
                std::process::exit(1);
            }
        }
    }
    let idp_after: Vec<Value> = idps.iter().map(|u| idp_stats(u)).collect();
    if let Some(path) = opts.get("samples-out") {
        let mut csv = String::from("wall,cpu_ticks,rss_kb\n");
        for s in &samples {
            csv.push_str(&format!("{:.3},{},{}\n", s.wall, s.ticks, s.rss_kb));
        }
        std::fs::write(path, csv).expect("write --samples-out");
    }

    let (w0, w1) = (samples[0].wall, samples[samples.len() - 1].wall);
    // Refresh events from the broker's JSON log.
    let text = std::fs::read_to_string(log_path).unwrap_or_default();
    // (when the refresh finished, its trigger, when it began: finish minus took_ms).
    let mut events: Vec<(f64, String, f64)> = Vec::new();
    let mut timer_took: Vec<u64> = Vec::new();
    let mut failures = 0usize;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        // Fields may be at the top level or under "fields", depending on the formatter.
        let field = |k: &str| -> Option<String> {
            v.get(k)
                .or_else(|| v.get("fields").and_then(|f| f.get(k)))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let Some(ts) = v
            .get("timestamp")
            .and_then(Value::as_str)
            .and_then(parse_rfc3339)
        else {
            continue;
        };
        if ts < w0 || ts > w1 {
            continue;
        }
        match field("message").as_deref() {
            Some("refreshed") => {
                let trigger = field("trigger").unwrap_or_default();
                let took = v
                    .get("took_ms")
                    .or_else(|| v.get("fields").and_then(|f| f.get("took_ms")))
                    .and_then(Value::as_u64);
                if let (true, Some(took)) = (trigger == "timer", took) {
                    timer_took.push(took);
                }
                let began = ts - took.unwrap_or(0) as f64 / 1e3;
                events.push((ts, trigger, began));
            }
            Some(m) if m.starts_with("refresh failed") => failures += 1,
            _ => {}
        }
    }
    // Proactive refreshes per wall-clock second, by when they began (when the IdP was
    // asked: the load the spread is for) and by when they finished (a stall in the
    // broker's disk writes bunches finishes that began apart).
    let mut per_second: BTreeMap<i64, usize> = BTreeMap::new();
    let mut per_second_done: BTreeMap<i64, usize> = BTreeMap::new();
    let mut by_trigger: BTreeMap<String, usize> = BTreeMap::new();
    for (ts, trigger, began) in &events {
        *by_trigger.entry(trigger.clone()).or_default() += 1;
        if trigger == "timer" {
            *per_second.entry(began.floor() as i64).or_default() += 1;
            *per_second_done.entry(ts.floor() as i64).or_default() += 1;
        }
    }
    let timer_total: usize = per_second.values().sum();
    let (peak_second, peak) = per_second
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(s, n)| (*s as f64 - w0, *n))
        .unwrap_or((0.0, 0));
    let peak_done = per_second_done.values().copied().max().unwrap_or(0);
    let busy_seconds = per_second.len();

    // CPU per sampling interval; an interval is idle when no refresh of any kind happened
    // within a second of it (a wave's tail work is not counted as idle).
    let mut idle_ticks = 0u64;
    let mut idle_secs = 0.0f64;
    let mut idle_intervals = 0usize;
    let mut longest_idle = 0.0f64;
    let mut current_idle = 0.0f64;
    for pair in samples.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let quiet = !events
            .iter()
            .any(|(ts, _, began)| *ts >= a.wall - 1.0 && *began <= b.wall + 1.0);
        if quiet {
            idle_ticks += b.ticks - a.ticks;
            idle_secs += b.wall - a.wall;
            idle_intervals += 1;
            current_idle += b.wall - a.wall;
            longest_idle = longest_idle.max(current_idle);
        } else {
            current_idle = 0.0;
        }
    }
    let cpu_peak = samples
        .windows(2)
        .map(|p| (p[1].ticks - p[0].ticks) as f64 / clk / (p[1].wall - p[0].wall) * 100.0)
        .fold(0.0f64, f64::max);
    timer_took.sort_unstable();
    let took_pct = |p: f64| -> Value {
        if timer_took.is_empty() {
            return Value::Null;
        }
        let i = ((timer_took.len() as f64 * p).ceil() as usize).clamp(1, timer_took.len()) - 1;
        json!(timer_took[i])
    };
    let first = &samples[0];
    let last = &samples[samples.len() - 1];
    let total_cpu = (last.ticks - first.ticks) as f64 / clk / (w1 - w0) * 100.0;
    let idle_cpu = if idle_secs > 0.0 {
        json!(idle_ticks as f64 / clk / idle_secs * 100.0)
    } else {
        Value::Null
    };
    let idp: Vec<Value> = idps
        .iter()
        .zip(idp_before.iter().zip(&idp_after))
        .map(|(url, (b, a))| {
            json!({
                "url": url,
                "token_requests": counter(a, "token_requests") - counter(b, "token_requests"),
                "max_in_flight": counter(a, "max_in_flight"),
            })
        })
        .collect();
    let rss_max = samples.iter().map(|s| s.rss_kb).max().unwrap_or(0);
    println!(
        "{}",
        json!({
            "window_s": w1 - w0,
            "refreshes": by_trigger,
            "refresh_failures": failures,
            "timer_refreshes": timer_total,
            "timer_peak_per_second": peak,
            "timer_peak_second_at_s": peak_second,
            "timer_peak_share": if timer_total > 0 { json!(peak as f64 / timer_total as f64) } else { Value::Null },
            "timer_peak_per_second_finished": peak_done,
            "seconds_with_timer_refreshes": busy_seconds,
            "cpu_total_pct": total_cpu,
            "cpu_peak_pct": cpu_peak,
            "cpu_ms_per_refresh": if events.is_empty() { Value::Null } else {
                json!((last.ticks - first.ticks) as f64 / clk * 1e3 / events.len() as f64)
            },
            "timer_took_ms_p50": took_pct(0.5),
            "timer_took_ms_p99": took_pct(0.99),
            "timer_took_ms_max": took_pct(1.0),
            "cpu_idle_pct": idle_cpu,
            "idle_intervals": idle_intervals,
            "longest_idle_s": longest_idle,
            "rss_start_kb": first.rss_kb,
            "rss_end_kb": last.rss_kb,
            "rss_max_kb": rss_max,
            "hwm_end_kb": last.hwm_kb,
            "idp": idp,
        })
    );
}

// ---------------------------------------------------------------------------------------
// meter

/// Requests in flight through the meter now, and the most there ever were.
#[derive(Default)]
struct Meter {
    now: std::sync::atomic::AtomicU64,
    peak: std::sync::atomic::AtomicU64,
    total: std::sync::atomic::AtomicU64,
}

/// The IdPs sit behind one meter so that the requests in flight to all of them are
/// counted at the same instants: a sum of each IdP's own peak only bounds the true
/// peak from above. A request counts from when the meter holds all of it until the
/// IdP's whole answer is back, a sub-interval of the broker's own call, so a broker
/// that respects its cap can never make the meter read more than the cap.
fn meter(opts: &Opts) {
    let listen: SocketAddr = opts.req("listen").parse().expect("--listen HOST:PORT");
    let routes: Arc<BTreeMap<String, SocketAddr>> = Arc::new(
        opts.all("route")
            .iter()
            .map(|r| {
                let (name, addr) = r.split_once('=').expect("--route NAME=HOST:PORT");
                (
                    name.to_owned(),
                    addr.parse().expect("--route NAME=HOST:PORT"),
                )
            })
            .collect(),
    );
    let meter = Arc::new(Meter::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .expect("bind --listen");
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let (routes, meter) = (routes.clone(), meter.clone());
            tokio::spawn(async move {
                if let Err(e) = meter_connection(client, &routes, &meter).await {
                    eprintln!("meter: {e}");
                }
            });
        }
    });
}

/// Serves one client connection: each request goes to its route's IdP over a
/// connection kept for this client connection (HTTP/1.1, one request at a time).
async fn meter_connection(
    mut client: tokio::net::TcpStream,
    routes: &BTreeMap<String, SocketAddr>,
    meter: &Meter,
) -> Result<(), String> {
    use std::sync::atomic::Ordering::SeqCst;
    let mut upstreams: BTreeMap<String, tokio::net::TcpStream> = BTreeMap::new();
    let mut buf = Vec::new();
    loop {
        let Some((head_len, body_len)) = read_request(&mut client, &mut buf).await? else {
            return Ok(());
        };
        let request = buf.drain(..head_len + body_len).collect::<Vec<u8>>();
        let line_end = request.iter().position(|&b| b == b'\r').unwrap_or(0);
        let line = String::from_utf8_lossy(&request[..line_end]).into_owned();
        let path = line.split(' ').nth(1).unwrap_or("");
        if path == "/meter" {
            let body = json!({
                "max_in_flight": meter.peak.load(SeqCst),
                "requests": meter.total.load(SeqCst),
            })
            .to_string();
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            client
                .write_all(answer.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            continue;
        }
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (name, rest) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let Some(addr) = routes.get(name) else {
            return Err(format!("no route for {path}"));
        };
        // The same request line, without the route's prefix.
        let method = line.split(' ').next().unwrap_or("POST");
        let mut forward = format!("{method} /{rest} HTTP/1.1").into_bytes();
        forward.extend_from_slice(&request[line_end..]);

        let now = meter.now.fetch_add(1, SeqCst) + 1;
        meter.peak.fetch_max(now, SeqCst);
        meter.total.fetch_add(1, SeqCst);
        let answer = meter_forward(&mut upstreams, name, *addr, &forward).await;
        meter.now.fetch_sub(1, SeqCst);
        client
            .write_all(&answer?)
            .await
            .map_err(|e| e.to_string())?;
    }
}

/// Reads one whole request into `buf`: (head length, body length), or None at a clean end.
async fn read_request(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<(usize, usize)>, String> {
    loop {
        if let Some(head_len) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) {
            let head = String::from_utf8_lossy(&buf[..head_len]).to_ascii_lowercase();
            let body_len = head
                .split("\r\n")
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(Ok(0), |v| {
                    v.trim().parse().map_err(|_| "bad content-length")
                })?;
            if buf.len() >= head_len + body_len {
                return Ok(Some((head_len, body_len)));
            }
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err("request cut short".into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends one request to a route's IdP and returns its whole answer. A kept connection
/// that the IdP closed while idle is replaced once (nothing of the answer was read).
async fn meter_forward(
    upstreams: &mut BTreeMap<String, tokio::net::TcpStream>,
    name: &str,
    addr: SocketAddr,
    request: &[u8],
) -> Result<Vec<u8>, String> {
    for _ in 0..2 {
        let reused = upstreams.contains_key(name);
        let mut upstream = match upstreams.remove(name) {
            Some(stream) => stream,
            None => tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?,
        };
        match exchange(&mut upstream, request).await {
            Ok(answer) => {
                upstreams.insert(name.to_owned(), upstream);
                return Ok(answer);
            }
            Err(Some(e)) => return Err(e),
            Err(None) if reused => continue,
            Err(None) => return Err("the IdP closed the connection".into()),
        }
    }
    Err("the IdP closed the connection".into())
}

/// One request and its whole answer; Err(None) when the connection was closed before
/// any of the answer came.
async fn exchange(
    upstream: &mut tokio::net::TcpStream,
    request: &[u8],
) -> Result<Vec<u8>, Option<String>> {
    if upstream.write_all(request).await.is_err() {
        return Err(None);
    }
    let mut answer = Vec::new();
    loop {
        if let Some((_, used, _)) = parse_response(&answer).map_err(Some)? {
            answer.truncate(used);
            return Ok(answer);
        }
        let mut chunk = [0u8; 8192];
        let n = match upstream.read(&mut chunk).await {
            Ok(n) => n,
            Err(_) if answer.is_empty() => return Err(None),
            Err(e) => return Err(Some(e.to_string())),
        };
        if n == 0 {
            return Err(if answer.is_empty() {
                None
            } else {
                Some("the IdP closed the connection mid-answer".into())
            });
        }
        answer.extend_from_slice(&chunk[..n]);
    }
}
