//! A real browser for tests that look at the dashboard as an operator would: headless Chromium
//! driven through chromedriver's W3C WebDriver API, by a small hand-written HTTP/1.1 client.
//!
//! Debian's `chromium` and `chromium-driver` packages, at their fixed paths (`scripts/deps.sh`
//! installs them); a missing one fails the test and says how to get it. Each [`Browser`] has
//! its own chromedriver on a port the driver picks itself, its own throwaway profile, and ends
//! both (and every Chromium process) when dropped.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where Debian's `chromium` package puts the browser (a launcher script that execs the binary).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Where Debian's `chromium-driver` package puts chromedriver (the same version as the browser:
/// the two come from one source package, which is why the tests use no other pair).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The window every browser starts with, so screenshots and layouts compare across runs. The
/// viewport (and so a screenshot) is as wide, and shorter by the bars headless Chromium keeps.
pub const WINDOW: (u32, u32) = (1280, 900);

/// How long one WebDriver command may take before the test is told chromedriver is stuck
/// (longer than the page load and script timeouts given to the session, so those answer first).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The key under which W3C WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Chromium's switches: no sandbox (tests run as root in containers, where it cannot start),
/// and nothing that talks to the outside world on its own (updates, sync, QUIC probes), so a
/// page's network traffic is exactly what the page asked for.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

/// What went wrong talking to the browser.
#[derive(Debug, Clone)]
pub enum Error {
    /// WebDriver answered the command with an error: its HTTP status, error code (`no such
    /// element`, `javascript error`, ...) and message.
    WebDriver {
        command: String,
        status: u16,
        error: String,
        message: String,
    },
    /// chromedriver could not be reached or answered something that is not WebDriver.
    Transport { command: String, detail: String },
    /// A wait ran out; `last` is why the last attempt failed, if it did.
    Timeout {
        what: String,
        after: Duration,
        last: Option<Box<Error>>,
    },
    /// Writing a screenshot failed.
    Io { path: PathBuf, detail: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::WebDriver {
                command,
                status,
                error,
                message,
            } => write!(f, "{command}: WebDriver {status} {error}: {message}"),
            Error::Transport { command, detail } => write!(f, "{command}: {detail}"),
            Error::Timeout { what, after, last } => {
                write!(f, "{what}: not after {after:?}")?;
                if let Some(last) = last {
                    write!(f, " (last attempt: {last})")?;
                }
                Ok(())
            }
            Error::Io { path, detail } => write!(f, "{}: {detail}", path.display()),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One WebDriver session on one chromedriver: what elements need to send their own commands.
#[derive(Debug, Clone)]
struct Session {
    driver: SocketAddr,
    id: String,
}

impl Session {
    async fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let path = format!("/session/{}{path}", self.id);
        command(self.driver, method, &path, body).await
    }
}

/// A headless Chromium with its chromedriver; both end when this is dropped.
#[derive(Debug)]
pub struct Browser {
    session: Session,
    driver: Child,
    driver_log: PathBuf,
    /// The profile (and chromedriver's log): fresh for each browser so no cache, cookie or
    /// service worker of an earlier test changes what a page loads.
    _dir: tempfile::TempDir,
}

/// An element found on the current page; stale once the page changes.
#[derive(Debug, Clone)]
pub struct Element {
    session: Session,
    id: String,
    /// The selector it was found with, for error messages.
    css: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session (1280x900, browser console logged).
    /// Panics, never skips, when either is not installed, and with chromedriver's log when the
    /// session cannot be made.
    pub async fn start() -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).is_file(),
                "{path} is missing: the browser tests need Debian's {package} package; run \
                 scripts/deps.sh (or `apt-get install -y chromium chromium-driver`)"
            );
        }
        let dir = tempfile::tempdir().expect("temp dir for the browser profile");
        let driver_log = dir.path().join("chromedriver.log");
        let profile = dir.path().join("profile");
        let mut cmd = Command::new(CHROMEDRIVER);
        // Port 0: chromedriver binds a free port itself and prints it, so no other process can
        // take the port between our choosing it and chromedriver binding it.
        cmd.arg("--port=0")
            .arg(format!("--log-path={}", driver_log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group: Drop kills the group, which reaches every Chromium process
            // even when chromedriver itself is already gone.
            .process_group(0);
        let mut driver = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {CHROMEDRIVER}: {e}"));
        let port = match driver.stdout.take().map(read_port) {
            Some(rx) => tokio::time::timeout(Duration::from_secs(20), rx).await,
            None => panic!("chromedriver's stdout was not captured"),
        };
        let port = match port {
            Ok(Ok(Some(port))) => port,
            other => {
                let why = match other {
                    Err(_) => "not within 20 s".to_owned(),
                    _ => match driver.try_wait() {
                        Ok(Some(status)) => format!("it exited ({status})"),
                        _ => "its output ended".to_owned(),
                    },
                };
                kill_group(&mut driver);
                panic!(
                    "chromedriver did not say which port it listens on ({why}):\n{}",
                    read_log(&driver_log)
                );
            }
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut browser = Browser {
            session: Session {
                driver: addr,
                id: String::new(),
            },
            driver,
            driver_log,
            _dir: dir,
        };
        if let Err(e) = browser.wait_ready().await {
            panic!("chromedriver not ready: {e}\n{}", browser.driver_log());
        }
        match browser.new_session(&profile).await {
            Ok(id) => browser.session.id = id,
            Err(e) => panic!(
                "could not start Chromium: {e}\nchromedriver's log:\n{}",
                browser.driver_log()
            ),
        }
        browser
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let last = match command(self.session.driver, "GET", "/status", None).await {
                Ok(v) if v["ready"] == json!(true) => return Ok(()),
                Ok(v) => Error::Transport {
                    command: "GET /status".into(),
                    detail: format!("not ready: {v}"),
                },
                Err(e) => e,
            };
            if let Ok(Some(status)) = self.driver.try_wait() {
                return Err(Error::Transport {
                    command: "GET /status".into(),
                    detail: format!("chromedriver exited ({status})"),
                });
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: "chromedriver ready".into(),
                    after: Duration::from_secs(20),
                    last: Some(Box::new(last)),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn new_session(&self, profile: &Path) -> Result<String> {
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.push(format!("--window-size={},{}", WINDOW.0, WINDOW.1));
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
                    "goog:loggingPrefs": { "browser": "ALL" },
                    // Shorter than the default five minutes, and than COMMAND_TIMEOUT, so a page
                    // that never loads fails with WebDriver's own error.
                    "timeouts": { "pageLoad": 30_000, "script": 30_000, "implicit": 0 },
                }
            }
        });
        let v = command(self.session.driver, "POST", "/session", Some(&caps)).await?;
        match v["sessionId"].as_str() {
            Some(id) => Ok(id.to_owned()),
            None => Err(Error::Transport {
                command: "POST /session".into(),
                detail: format!("no sessionId in {v}"),
            }),
        }
    }

    /// The process group of chromedriver and every Chromium process it starts (what `Drop`
    /// kills), for a test that checks none of them outlives the browser.
    pub fn process_group(&self) -> u32 {
        self.driver.id()
    }

    /// Everything chromedriver has logged so far (for a failing test's message).
    pub fn driver_log(&self) -> String {
        read_log(&self.driver_log)
    }

    /// Opens `url` and returns once the page has loaded (its `load` event).
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.session
            .command("POST", "/url", Some(&json!({ "url": url })))
            .await
            .map(drop)
    }

    pub async fn current_url(&self) -> Result<String> {
        let v = self.session.command("GET", "/url", None).await?;
        string(v, "GET /url")
    }

    pub async fn title(&self) -> Result<String> {
        let v = self.session.command("GET", "/title", None).await?;
        string(v, "GET /title")
    }

    /// The first element matching `css`; a WebDriver `no such element` error when there is none.
    pub async fn find(&self, css: &str) -> Result<Element> {
        let v = self
            .session
            .command("POST", "/element", Some(&by_css(css)))
            .await?;
        element(&self.session, v, css)
    }

    /// Every element matching `css`, possibly none.
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let v = self
            .session
            .command("POST", "/elements", Some(&by_css(css)))
            .await?;
        elements(&self.session, v, css)
    }

    /// The first element matching `css` inside `parent`.
    pub async fn find_in(&self, parent: &Element, css: &str) -> Result<Element> {
        parent.find(css).await
    }

    /// Waits until an element matches `css` (a page that renders later, or a navigation that
    /// has not happened yet) and returns it.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Result<Element> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.find(css).await {
                Ok(e) => return Ok(e),
                // Only "not there yet" is worth waiting for; a bad selector or a dead session
                // will not get better.
                Err(e @ Error::WebDriver { .. }) if e.is_no_such_element() => e,
                Err(e) => return Err(e),
            };
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("an element matching {css:?}"),
                    after: timeout,
                    last: Some(Box::new(last)),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `script` as the body of a function in the page (`arguments[i]` are `args`) and
    /// returns what it returns.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.session
            .command(
                "POST",
                "/execute/sync",
                Some(&json!({ "script": script, "args": args })),
            )
            .await
    }

    /// Resizes the window (a narrow screen, say).
    pub async fn set_window_size(&self, width: u32, height: u32) -> Result<()> {
        self.session
            .command(
                "POST",
                "/window/rect",
                Some(&json!({ "width": width, "height": height })),
            )
            .await
            .map(drop)
    }

    /// Saves a PNG of the viewport at `path`, creating its directories.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let v = self.session.command("GET", "/screenshot", None).await?;
        let b64 = string(v, "GET /screenshot")?;
        let png = base64_decode(&b64).map_err(|detail| Error::Transport {
            command: "GET /screenshot".into(),
            detail,
        })?;
        let io = |e: std::io::Error| Error::Io {
            path: path.to_owned(),
            detail: e.to_string(),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(path, png).map_err(io)
    }

    /// The browser console's errors since the last call: `console.error` calls, uncaught
    /// exceptions, and resources that failed to load (including a missing favicon), as
    /// chromedriver reports them (`URL LINE:COL "message"` or `URL - Failed to load ...`).
    pub async fn console_errors(&self) -> Result<Vec<String>> {
        // Chromedriver's own (Selenium) endpoint: W3C WebDriver has no log command. Reading the
        // log empties it, hence "since the last call".
        let v = self
            .session
            .command("POST", "/se/log", Some(&json!({ "type": "browser" })))
            .await?;
        let Value::Array(entries) = v else {
            return Err(Error::Transport {
                command: "POST /se/log".into(),
                detail: format!("expected a list of log entries, got {v}"),
            });
        };
        Ok(entries
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| match e["message"].as_str() {
                Some(m) => m.to_owned(),
                None => e.to_string(),
            })
            .collect())
    }

    /// Every URL the current page loaded: the document, then each resource the browser fetched
    /// for it (stylesheets, scripts, images, fonts, the favicon, fetch/XHR), failed ones too.
    pub async fn resource_urls(&self) -> Result<Vec<String>> {
        let v = self
            .execute(
                "const nav = performance.getEntriesByType('navigation').map(e => e.name);\n\
                 const doc = nav.length ? nav : [document.URL];\n\
                 return doc.concat(performance.getEntriesByType('resource').map(e => e.name));",
                vec![],
            )
            .await?;
        match v {
            Value::Array(urls) => urls
                .into_iter()
                .map(|u| string(u, "resource_urls"))
                .collect(),
            other => Err(Error::Transport {
                command: "resource_urls".into(),
                detail: format!("expected a list of URLs, got {other}"),
            }),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session lets Chromium shut down cleanly (and its crash handler with it);
        // the group kill after it is for whatever did not, or a session that never started.
        if !self.session.id.is_empty() {
            let path = format!("/session/{}", self.session.id);
            let _ = blocking_request(self.session.driver, "DELETE", &path, None);
        }
        kill_group(&mut self.driver);
        // `self._dir` (the profile) is removed after this, once nothing writes to it.
    }
}

impl Element {
    /// Its rendered text (what a person sees, as `innerText`).
    pub async fn text(&self) -> Result<String> {
        let v = self.command("GET", "/text", None).await?;
        string(v, &format!("text of {:?}", self.css))
    }

    /// The attribute `name` as written in the page (a relative `href` stays relative); `None`
    /// when the element has no such attribute.
    pub async fn attr(&self, name: &str) -> Result<Option<String>> {
        let v = self
            .command("GET", &format!("/attribute/{name}"), None)
            .await?;
        match v {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            other => Ok(Some(other.to_string())),
        }
    }

    /// Clicks it as a person would (scrolled into view; fails if something covers it).
    pub async fn click(&self) -> Result<()> {
        self.command("POST", "/click", Some(&json!({})))
            .await
            .map(drop)
    }

    /// The first element matching `css` inside this one.
    pub async fn find(&self, css: &str) -> Result<Element> {
        let v = self.command("POST", "/element", Some(&by_css(css))).await?;
        element(&self.session, v, css)
    }

    /// Every element matching `css` inside this one.
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let v = self
            .command("POST", "/elements", Some(&by_css(css)))
            .await?;
        elements(&self.session, v, css)
    }

    async fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let path = format!("/element/{}{path}", self.id);
        self.session.command(method, &path, body).await
    }
}

impl Error {
    /// Whether WebDriver said no element matched.
    pub fn is_no_such_element(&self) -> bool {
        matches!(self, Error::WebDriver { error, .. } if error == "no such element")
    }
}

fn by_css(css: &str) -> Value {
    json!({ "using": "css selector", "value": css })
}

fn element(session: &Session, v: Value, css: &str) -> Result<Element> {
    match v[ELEMENT_KEY].as_str() {
        Some(id) => Ok(Element {
            session: session.clone(),
            id: id.to_owned(),
            css: css.to_owned(),
        }),
        None => Err(Error::Transport {
            command: format!("find {css:?}"),
            detail: format!("no element reference in {v}"),
        }),
    }
}

fn elements(session: &Session, v: Value, css: &str) -> Result<Vec<Element>> {
    match v {
        Value::Array(found) => found
            .into_iter()
            .map(|e| element(session, e, css))
            .collect(),
        other => Err(Error::Transport {
            command: format!("find all {css:?}"),
            detail: format!("expected a list of elements, got {other}"),
        }),
    }
}

fn string(v: Value, command: &str) -> Result<String> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(Error::Transport {
            command: command.to_owned(),
            detail: format!("expected a string, got {other}"),
        }),
    }
}

/// Reads chromedriver's stdout on a thread until it says its port, then keeps draining it so a
/// chatty driver never blocks on a full pipe.
fn read_port(stdout: std::process::ChildStdout) -> tokio::sync::oneshot::Receiver<Option<u16>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref().map_while(Result::ok) {
            // "ChromeDriver was started successfully on port 40043."
            let port = line
                .strip_prefix("ChromeDriver was started successfully on port ")
                .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok());
            if let Some(port) = port {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Some(port));
                }
            }
        }
        if let Some(tx) = tx {
            let _ = tx.send(None);
        }
    });
    rx
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
}

/// Kills chromedriver's process group (chromedriver and the Chromium it started) and reaps
/// chromedriver.
fn kill_group(driver: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", driver.id())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = driver.kill();
    let _ = driver.wait();
}

/// Sends one WebDriver command and returns its `value`, or the error WebDriver gave.
async fn command(
    driver: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value> {
    let name = format!("{method} {path}");
    let request = encode_request(driver, method, path, body);
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(driver).await?;
        stream.write_all(&request).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut chunk).await?;
            buf.extend_from_slice(&chunk[..n]);
            if let Some(response) = parse_response(&buf, n == 0).map_err(std::io::Error::other)? {
                return Ok::<_, std::io::Error>(response);
            }
        }
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, exchange).await {
        Ok(Ok(response)) => decode_response(&name, response),
        Ok(Err(e)) => Err(Error::Transport {
            command: name,
            detail: format!("chromedriver at {driver}: {e}"),
        }),
        Err(_) => Err(Error::Timeout {
            what: name,
            after: COMMAND_TIMEOUT,
            last: None,
        }),
    }
}

/// [`command`] without a runtime, for `Drop`: a short deadline, since a driver that does not
/// answer is killed right after anyway.
fn blocking_request(
    driver: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value> {
    let name = format!("{method} {path}");
    let exchange = || {
        let timeout = Duration::from_secs(10);
        let mut stream = std::net::TcpStream::connect_timeout(&driver, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(&encode_request(driver, method, path, body))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut chunk)?;
            buf.extend_from_slice(&chunk[..n]);
            if let Some(response) = parse_response(&buf, n == 0).map_err(std::io::Error::other)? {
                return Ok::<_, std::io::Error>(response);
            }
        }
    };
    match exchange() {
        Ok(response) => decode_response(&name, response),
        Err(e) => Err(Error::Transport {
            command: name,
            detail: e.to_string(),
        }),
    }
}

fn encode_request(driver: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Vec<u8> {
    let body = body.map(Value::to_string).unwrap_or_default();
    // chromedriver refuses a Host that is not a local address (DNS rebinding protection).
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {driver}\r\nConnection: close\r\n\
         Accept: application/json\r\n"
    );
    if method != "GET" {
        request.push_str("Content-Type: application/json; charset=utf-8\r\n");
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// An HTTP response that has arrived whole.
#[derive(Debug)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

/// Parses the bytes received so far (`eof`: the connection is closed); `None` while the
/// response is incomplete. The end is found by Content-Length or chunking, not by the
/// connection closing: chromedriver keeps it open whatever `Connection: close` says.
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let incomplete = |what: &str| {
        if eof {
            Err(format!("connection closed {what} ({} bytes)", buf.len()))
        } else {
            Ok(None)
        }
    };
    let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return incomplete("inside the HTTP header");
    };
    let head = String::from_utf8_lossy(&buf[..split]);
    let rest = &buf[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        // chromedriver writes `Content-Length:882`, without the customary space.
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.eq_ignore_ascii_case("chunked")
        {
            chunked = true;
        }
    }
    let body = if chunked {
        match dechunk(rest)? {
            Some(body) => body,
            None => return incomplete("inside a chunked body"),
        }
    } else if let Some(len) = length {
        match rest.get(..len) {
            Some(body) => body.to_vec(),
            None => return incomplete("before Content-Length bytes of body"),
        }
    } else if eof {
        rest.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(Response { status, body }))
}

/// A WebDriver answer (`{"value": ...}`): the value on success, WebDriver's error otherwise.
fn decode_response(command: &str, response: Response) -> Result<Value> {
    let Response { status, body } = response;
    let json: Value = serde_json::from_slice(&body).map_err(|e| Error::Transport {
        command: command.to_owned(),
        detail: format!(
            "HTTP {status}, not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        ),
    })?;
    let value = json.get("value").cloned().unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return Ok(value);
    }
    Err(Error::WebDriver {
        command: command.to_owned(),
        status,
        error: value["error"]
            .as_str()
            .unwrap_or("unknown error")
            .to_owned(),
        // The message, without the stack trace of chromedriver's C++ that comes with it.
        message: match value["message"].as_str() {
            Some(m) => m.to_owned(),
            None => json.to_string(),
        },
    })
}

/// A chunked body decoded; `None` until its last chunk has arrived.
fn dechunk(mut raw: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        let Some(chunk) = raw.get(..size) else {
            return Ok(None);
        };
        body.extend_from_slice(chunk);
        let Some(next) = raw.get(size + 2..) else {
            return Ok(None);
        };
        raw = next;
    }
}

/// Standard base64 (what WebDriver's screenshot is): a handful of lines instead of a crate.
fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut bits: u32 = 0;
    let mut nbits = 0;
    for (i, c) in text.bytes().enumerate() {
        let sextet = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            b'\r' | b'\n' => continue,
            _ => return Err(format!("not base64: byte {c:#04x} at {i}")),
        };
        bits = (bits << 6) | u32::from(sextet);
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    Ok(out)
}

/// Where screenshots go: `screenshots/` in `$CARGO_TARGET_DIR` when set, else in the
/// workspace's `target/`.
pub fn screenshot_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR")));
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        // A relative one is taken as cargo would from the workspace root (tests run in their
        // package's directory, one level down).
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    };
    target.join("screenshots")
}
