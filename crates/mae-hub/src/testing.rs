//! A local HTTP server that speaks the part of the Hugging Face hub's API that `hf-hub` (and so
//! [`crate::Hub`]) uses, for tests: started on `127.0.0.1`, reached through `HF_ENDPOINT` or
//! [`crate::Hub::with_endpoint`]. No network, no Python.
//!
//! What it answers, as huggingface.co does:
//! - `GET /{owner}/{name}/resolve/{rev}/{file}` (models) and
//!   `GET /datasets/{owner}/{name}/resolve/{rev}/{file}`: the bytes, with `ETag`,
//!   `X-Repo-Commit`, `Accept-Ranges`, and for a `Range: bytes=a-b` request a `206` with
//!   `Content-Range: bytes a-b/total` (hf-hub reads the file size from a `bytes=0-0` request
//!   and resumes an interrupted download with `bytes=n-`).
//! - `GET /api/{models,datasets}/{owner}/{name}/revision/{rev}`: `{"sha": ..., "siblings":
//!   [{"rfilename": ...}]}`.
//! - Errors: an unknown repository is `401` with `X-Error-Code: RepoNotFound` (what the hub says
//!   to an anonymous client), a gated one without the right token `401` with `GatedRepo`, an
//!   unknown revision `404` with `RevisionNotFound`, an unknown file `404` with
//!   `EntryNotFound`.
//!
//! Every request is recorded ([`HubServer::requests`], with its `Range` in
//! [`HubServer::ranges`]), so a test can assert that an offline load made none, or that a
//! broken download was resumed where it stopped. [`HubServer::drop_connections`] breaks the
//! next downloads of a file after some bytes, as a flaky network does.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::RepoKind;

/// One repository as the server holds it.
#[derive(Debug, Clone, Default)]
struct Repo {
    commit: String,
    files: BTreeMap<String, Vec<u8>>,
    /// When set, requests need `Authorization: Bearer <token>`.
    token: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    repos: BTreeMap<(String, String), Repo>,
    requests: Vec<String>,
    /// `(path, Range header)` of every request that had one.
    ranges: Vec<(String, String)>,
    /// Downloads to break: path suffix (`/resolve/main/model.safetensors`), bytes of the body
    /// sent before the connection closes, and how many more downloads to break.
    drops: Vec<(String, usize, usize)>,
}

/// The local hub server; stops when dropped.
pub struct HubServer {
    endpoint: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn kind_key(kind: RepoKind) -> String {
    kind.plural().to_string()
}

/// A 64-bit FNV-1a hash as 16 hex digits, repeated to the 64 of a sha256 (a stand-in for the
/// hub's content hashes: stable per content, which is all a cache needs).
fn content_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}").repeat(4)
}

impl HubServer {
    /// Starts the server on a free port of 127.0.0.1.
    pub fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (state2, stop2) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let state = state2.clone();
                        std::thread::spawn(move || {
                            let _ = serve(stream, &state);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        Ok(Self { endpoint, state, stop, thread: Some(thread) })
    }

    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Serves `files` (path in the repository, bytes) as `name` (`OWNER/NAME`) at revision
    /// `main`; returns the commit hash the server gives that revision.
    pub fn add_repo(&self, kind: RepoKind, name: &str, files: Vec<(String, Vec<u8>)>) -> String {
        let mut all: Vec<u8> = name.as_bytes().to_vec();
        for (path, bytes) in &files {
            all.extend_from_slice(path.as_bytes());
            all.extend_from_slice(content_hash(bytes).as_bytes());
        }
        let commit = content_hash(&all)[..40].to_string();
        let repo = Repo { commit: commit.clone(), files: files.into_iter().collect(), token: None };
        self.lock().repos.insert((kind_key(kind), name.to_string()), repo);
        commit
    }

    /// Gates a repository added before: requests need `Authorization: Bearer <token>`.
    pub fn gate(&self, kind: RepoKind, name: &str, token: &str) {
        if let Some(repo) = self.lock().repos.get_mut(&(kind_key(kind), name.to_string())) {
            repo.token = Some(token.to_string());
        }
    }

    /// The request lines received so far (`GET /path`).
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// `(path, Range header)` of the requests that asked for a byte range, in order.
    pub fn ranges(&self) -> Vec<(String, String)> {
        self.lock().ranges.clone()
    }

    /// Breaks the next `times` downloads of `file` (a path in any repository): the response
    /// announces the whole length, sends `after_bytes` of it and closes the connection. The
    /// 1-byte size probe (`Range: bytes=0-0`) is answered normally.
    pub fn drop_connections(&self, file: &str, after_bytes: usize, times: usize) {
        self.lock().drops.push((format!("/{file}"), after_bytes, times));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Request { method, path, headers })
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn error(status: u16, code: &str, message: &str) -> Self {
        let body = format!("{{\"error\":\"{message}\"}}").into_bytes();
        Self {
            status,
            headers: vec![
                ("X-Error-Code".into(), code.into()),
                ("Content-Type".into(), "application/json".into()),
            ],
            body,
        }
    }
}

fn serve(mut stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let request = read_request(&stream)?;
    let (response, cut) = {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        state.requests.push(format!("{} {}", request.method, request.path));
        if let Some(range) = request.header("Range") {
            state.ranges.push((request.path.clone(), range.to_string()));
        }
        let cut = take_drop(&mut state, &request);
        (route(&request, &state), cut)
    };
    let reason = match response.status {
        200 => "OK",
        206 => "Partial Content",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Error",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\nConnection: close\r\n", response.status);
    for (k, v) in &response.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", response.body.len()));
    stream.write_all(head.as_bytes())?;
    if request.method != "HEAD" {
        let sent = cut.map_or(response.body.len(), |n| n.min(response.body.len()));
        stream.write_all(&response.body[..sent])?;
    }
    stream.flush()?;
    // Let the client read to the end before the socket closes.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.read(&mut [0u8; 64]);
    Ok(())
}

/// Whether this request is one of the downloads to break, and after how many body bytes.
fn take_drop(state: &mut State, request: &Request) -> Option<usize> {
    if request.method != "GET" || request.header("Range") == Some("bytes=0-0") {
        return None;
    }
    let path = request.path.split('?').next().unwrap_or_default();
    let drop = state.drops.iter_mut().find(|(file, _, times)| *times > 0 && path.ends_with(file.as_str()))?;
    drop.2 -= 1;
    Some(drop.1)
}

/// `(kind, OWNER/NAME, rest)` of a path after its kind prefix: `owner/name/<rest>`.
fn split_repo(path: &str) -> Option<(String, &str)> {
    let mut it = path.splitn(3, '/');
    let (owner, name, rest) = (it.next()?, it.next()?, it.next().unwrap_or(""));
    Some((format!("{owner}/{name}"), rest))
}

fn route(request: &Request, state: &State) -> Response {
    let path = request.path.split('?').next().unwrap_or_default().trim_start_matches('/');
    if let Some(api) = path.strip_prefix("api/") {
        let (kind, rest) = api.split_once('/').unwrap_or((api, ""));
        let Some((name, rest)) = split_repo(rest) else {
            return Response::error(404, "EntryNotFound", "no route");
        };
        let rev = rest.strip_prefix("revision/").unwrap_or("main");
        return with_repo(request, state, kind, &name, rev, |repo| {
            let siblings: Vec<String> =
                repo.files.keys().map(|f| format!("{{\"rfilename\":\"{f}\"}}")).collect();
            let body = format!("{{\"sha\":\"{}\",\"siblings\":[{}]}}", repo.commit, siblings.join(","));
            Response {
                status: 200,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: body.into_bytes(),
            }
        });
    }
    let (kind, rest) = match path.strip_prefix("datasets/") {
        Some(rest) => ("datasets", rest),
        None => ("models", path),
    };
    let Some((name, rest)) = split_repo(rest) else {
        return Response::error(404, "EntryNotFound", "no route");
    };
    let Some((rev, file)) = rest.strip_prefix("resolve/").and_then(|r| r.split_once('/')) else {
        return Response::error(404, "EntryNotFound", "no route");
    };
    with_repo(request, state, kind, &name, rev, |repo| match repo.files.get(file) {
        None => Response::error(404, "EntryNotFound", &format!("{file} does not exist")),
        Some(bytes) => file_response(request, repo, bytes),
    })
}

fn with_repo(
    request: &Request,
    state: &State,
    kind: &str,
    name: &str,
    rev: &str,
    answer: impl FnOnce(&Repo) -> Response,
) -> Response {
    let Some(repo) = state.repos.get(&(kind.to_string(), name.to_string())) else {
        return Response::error(401, "RepoNotFound", "Repository not found");
    };
    if let Some(token) = &repo.token {
        if request.header("Authorization") != Some(&format!("Bearer {token}")) {
            return Response::error(401, "GatedRepo", "Access to this repository is restricted");
        }
    }
    if rev != "main" && rev != repo.commit {
        return Response::error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
    }
    answer(repo)
}

fn file_response(request: &Request, repo: &Repo, bytes: &[u8]) -> Response {
    let total = bytes.len();
    let mut headers = vec![
        ("ETag".to_string(), format!("\"{}\"", content_hash(bytes))),
        ("X-Repo-Commit".to_string(), repo.commit.clone()),
        ("Accept-Ranges".to_string(), "bytes".to_string()),
    ];
    let Some(range) = request.header("Range").and_then(|r| r.strip_prefix("bytes=")) else {
        return Response { status: 200, headers, body: bytes.to_vec() };
    };
    let (start, end) = range.split_once('-').unwrap_or((range, ""));
    let start: usize = start.parse().unwrap_or(0);
    let end: usize = end.parse().map_or(total.saturating_sub(1), |e: usize| e.min(total.saturating_sub(1)));
    if start >= total || start > end {
        headers.push(("Content-Range".into(), format!("bytes */{total}")));
        return Response { status: 416, headers, body: Vec::new() };
    }
    headers.push(("Content-Range".into(), format!("bytes {start}-{end}/{total}")));
    Response { status: 206, headers, body: bytes[start..=end].to_vec() }
}
