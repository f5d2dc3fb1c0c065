//! A real S3-protocol server for tests: moto's `moto_server` on a free
//! loopback port, killed on drop; and a TCP proxy in front of it that a
//! test can cut, to play a server that dies mid-upload.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A running `moto_server`; killed when dropped.
pub struct Moto {
    child: Option<Child>,
    port: u16,
}

impl Moto {
    /// Starts `moto_server -H 127.0.0.1 -p PORT` on a free port and waits
    /// until it answers. When `moto_server` is not installed, reports a
    /// skip (a failure under `BACKSTOP_TEST_REQUIRE_ALL`) and returns
    /// `None`.
    pub fn start() -> Option<Moto> {
        if !crate::have("moto_server") {
            return None;
        }
        // Another process may take the free port before moto binds it:
        // then moto exits, and another port is tried.
        for _ in 0..5 {
            if let Some(moto) = Moto::try_start() {
                return Some(moto);
            }
        }
        panic!("moto_server did not start on any of 5 free ports");
    }

    fn try_start() -> Option<Moto> {
        let port = free_port();
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        kill_with_parent(&mut cmd);
        let mut moto = Moto {
            child: Some(cmd.spawn().expect("run moto_server")),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if http(port, "GET", "/", &[], b"").is_ok() {
                return Some(moto);
            }
            let child = moto.child.as_mut().expect("child until drop");
            if child.try_wait().expect("poll moto_server").is_some() {
                moto.child = None;
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("moto_server on port {port} did not answer within 60 s");
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates the bucket `name`.
    pub fn create_bucket(&self, name: &str) {
        let answer = http(self.port, "PUT", &format!("/{name}"), &[], b"").expect("PUT bucket");
        assert_eq!(
            answer.status, 200,
            "creating bucket {name}: {}",
            answer.body
        );
    }

    /// An S3 request outside any store, as the bucket's owner (moto takes
    /// an unsigned request for an anonymous one).
    pub fn s3_request(&self, method: &str, path: &str, body: &[u8]) -> Answer {
        http(self.port, method, path, S3_HEADERS, body).expect("S3 request")
    }

    /// Creates an IAM user allowed everything on S3 and returns its access
    /// key id and secret. Call before [`Moto::require_auth`].
    pub fn create_user(&self, name: &str) -> (String, String) {
        let iam = |action: &str| {
            let body = format!("{action}&UserName={name}&Version=2010-05-08");
            let answer =
                http(self.port, "POST", "/", IAM_HEADERS, body.as_bytes()).expect("IAM request");
            assert_eq!(answer.status, 200, "IAM {action}: {}", answer.body);
            answer.body
        };
        iam("Action=CreateUser");
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        iam(&format!(
            "Action=PutUserPolicy&PolicyName=all-s3&PolicyDocument={}",
            form_encode(policy)
        ));
        let key = iam("Action=CreateAccessKey");
        let tag = |t: &str| {
            let open = format!("<{t}>");
            let start = key.find(&open).expect("tag in answer") + open.len();
            key[start..start + key[start..].find('<').expect("end")].to_string()
        };
        (tag("AccessKeyId"), tag("SecretAccessKey"))
    }

    /// From now on the server checks every request's signature against
    /// the users [`Moto::create_user`] made.
    pub fn require_auth(&self) {
        let headers = &[("Content-Type", "text/plain")];
        let answer =
            http(self.port, "POST", "/moto-api/reset-auth", headers, b"0").expect("reset-auth");
        assert_eq!(answer.status, 200, "enabling auth: {}", answer.body);
    }

    /// Kills the server now (a server dying mid-upload).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Unsigned IAM requests reach moto's IAM only with a credential scope
/// naming the service.
const IAM_HEADERS: &[(&str, &str)] = &[
    (
        "Authorization",
        "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/iam/aws4_request, \
         SignedHeaders=host, Signature=0",
    ),
    ("Content-Type", "application/x-www-form-urlencoded"),
];

/// What makes moto take a request for its owner's while it checks no
/// signatures.
const S3_HEADERS: &[(&str, &str)] = &[(
    "Authorization",
    "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, \
     SignedHeaders=host, Signature=0",
)];

/// Has the server die with the test process (even one killed with -9),
/// so no `moto_server` outlives its tests.
fn kill_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only makes one async-signal-safe system call.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(Into::into)
        });
    }
}

/// A port nothing listens on just now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// A bucket name no other test uses.
pub fn unique_bucket(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "bstest-{}-{}-{what}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// What a server answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One plain HTTP/1.1 request to `127.0.0.1:port`.
///
/// # Errors
///
/// Fails when the server cannot be reached or answers garbage.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let garbage = || std::io::Error::other(format!("not an HTTP answer: {text:.200}"));
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(garbage)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok(Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A TCP proxy from a port of its own to a server's. [`Proxy::cut`] drops
/// every connection and stops listening, as a dead server would;
/// [`Proxy::restore`] listens again on the same port.
pub struct Proxy {
    port: u16,
    shared: Arc<ProxyState>,
    accept: Option<thread::JoinHandle<()>>,
}

struct ProxyState {
    target: u16,
    up: AtomicBool,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
    /// Bytes relayed from the server to its clients.
    down: std::sync::atomic::AtomicU64,
}

impl Proxy {
    /// Starts a proxy to `127.0.0.1:target`.
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local address").port();
        let shared = Arc::new(ProxyState {
            target,
            up: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            down: std::sync::atomic::AtomicU64::new(0),
        });
        let state = Arc::clone(&shared);
        let accept = thread::spawn(move || accept_loop(Some(listener), port, &state));
        Proxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Bytes the server has sent through the proxy so far.
    pub fn bytes_down(&self) -> u64 {
        self.shared.down.load(Ordering::SeqCst)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.shared.up.store(false, Ordering::SeqCst);
        for conn in self.shared.conns.lock().expect("lock").drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
        // The accept loop closes its listener within a few milliseconds.
        thread::sleep(Duration::from_millis(50));
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.shared.up.store(true, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Accepts connections while the proxy is up; closes the listener while
/// it is cut, so that connecting is refused.
fn accept_loop(mut listener: Option<TcpListener>, port: u16, state: &Arc<ProxyState>) {
    while !state.stop.load(Ordering::SeqCst) {
        let up = state.up.load(Ordering::SeqCst);
        match (&listener, up) {
            (Some(_), false) => listener = None,
            (None, true) => {
                let bound = TcpListener::bind(("127.0.0.1", port)).expect("bind the proxy again");
                bound.set_nonblocking(true).expect("nonblocking");
                listener = Some(bound);
            }
            _ => {}
        }
        match listener.as_ref().map(TcpListener::accept) {
            Some(Ok((client, _))) => relay(client, state),
            _ => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Pumps bytes both ways between `client` and the target.
fn relay(client: TcpStream, state: &Arc<ProxyState>) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect(("127.0.0.1", state.target)) else {
        return;
    };
    let pair = (client.try_clone(), server.try_clone());
    let (Ok(client2), Ok(server2)) = pair else {
        return;
    };
    {
        let mut conns = state.conns.lock().expect("lock");
        conns.push(client.try_clone().expect("clone"));
        conns.push(server.try_clone().expect("clone"));
    }
    thread::spawn(move || pump(client, server, None));
    let counted = Arc::clone(state);
    thread::spawn(move || pump(server2, client2, Some(&counted.down)));
}

fn pump(mut from: TcpStream, mut to: TcpStream, count: Option<&std::sync::atomic::AtomicU64>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Some(c) = count {
            c.fetch_add(n as u64, Ordering::SeqCst);
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
