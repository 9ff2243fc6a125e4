//! Failover across bridge replicas: three `spotter-bridge run` processes on one Mosquitto behind
//! a real nginx, viewers that behave like the page (keep a cursor, reconnect through nginx with
//! `?epoch=&offset=`, apply `hello`, dedupe chat by id). One replica is killed with SIGKILL
//! mid-show, then all three are restarted in turn with SIGTERM: every viewer ends with every
//! accepted event exactly once and every chat message in the broker's order.

#[allow(
    dead_code,
    reason = "this file runs the bridges as child processes, not with support's in-process bridge"
)]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rumqttc::{AsyncClient, QoS};
use spotter_mqtt_link::testing::{free_port, wait_for_port};
use spotter_protocol::chat::ChatEvent;
use spotter_protocol::viewer::ServerMessage;
use spotter_protocol::{
    BBox, ChatMessage, ChatUser, EventType, OnScreen, OnScreenProduct, PROTOCOL_VERSION,
};
use support::{event, mqtt_client, write_catalog, SESSION, WAIT};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_spotter-bridge");
const VIEWERS: usize = 30;
const ONSCREEN: &str = "spotter/v1/demo/main/onscreen";
const CHAT: &str = "spotter/v1/demo/main/chat";
/// Between two polls of something the test waits for (readiness, a replica's first hello).
const POLL: Duration = Duration::from_millis(25);
/// How long a whole phase may take before the test fails rather than hangs.
const PHASE: Duration = Duration::from_secs(30);

/// Mosquitto on a free loopback port, in its own directory.
struct Broker {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let as_root = is_root(dir.path());
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 100000\nlog_dest none\n{}",
                if as_root { "user root\n" } else { "" }
            ),
        )
        .expect("write mosquitto.conf");
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto)");
        wait_for_port(port, "mosquitto", WAIT);
        Broker {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).is_ok_and(|m| m.uid() == 0)
}

/// nginx balancing WebSockets over the replicas, retrying the next one when a connect fails.
struct Nginx {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstreams: &[SocketAddr]) -> Nginx {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display();
        let servers: String = upstreams
            .iter()
            .map(|a| format!("    server {a} max_fails=0;\n"))
            .collect();
        let conf = format!(
            "{user}worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               upstream bridges {{\n{servers}  }}\n\
               map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
                 proxy_pass http://bridges;\n      proxy_http_version 1.1;\n\
                 proxy_set_header Upgrade $http_upgrade;\n\
                 proxy_set_header Connection $connection_upgrade;\n\
                 proxy_next_upstream error timeout;\n      proxy_connect_timeout 2s;\n\
                 proxy_read_timeout 1h;\n    }}\n  }}\n}}\n",
            user = if is_root(dir.path()) {
                "user root;\n"
            } else {
                ""
            },
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let child = std::process::Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (apt-get install nginx)");
        wait_for_port(port, "nginx", WAIT);
        Nginx {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One bridge replica: its config and, while running, its process.
struct Replica {
    http: SocketAddr,
    config: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn new(root: &Path, i: usize, broker: u16) -> Replica {
        let dir = root.join(format!("replica-{i}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = dir.join("bridge.toml");
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"{http}\"\n\
                 [mqtt]\nembedded = false\nurl = \"mqtt://127.0.0.1:{broker}\"\n\
                 client_id = \"replica-{i}\"\n\
                 [catalog]\ndir = \"{}\"\n\
                 [[stream]]\nstudio = \"demo\"\nstream = \"main\"\n\
                 [viewer]\nmax_per_address = 0\n\
                 [chat]\nstate_dir = \"state\"\n",
                root.join("catalog").display()
            ),
        )
        .expect("write config");
        Replica {
            http,
            config,
            dir,
            child: None,
        }
    }

    fn spawn(&mut self) {
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .current_dir(&self.dir)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the bridge");
        self.child = Some(child);
    }

    /// Until `/readyz` says ready (subscribed) and a viewer connecting straight to it is told
    /// the agent's session (it has the retained snapshot or an event).
    async fn ready(&self) {
        timeout(PHASE, async {
            while !readyz(self.http).await {
                tokio::time::sleep(POLL).await;
            }
            loop {
                let (mut ws, _) =
                    tokio_tungstenite::connect_async(format!("ws://{}/ws/demo/main", self.http))
                        .await
                        .expect("a ready replica takes viewers");
                let hello = first_hello(&mut ws).await;
                let _ = ws.close(None).await;
                if matches!(&hello, ServerMessage::Hello { epoch, .. } if epoch == SESSION) {
                    return;
                }
                tokio::time::sleep(POLL).await;
            }
        })
        .await
        .expect("the replica is ready in time");
    }

    fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("a running replica")
    }

    fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        timeout(PHASE, child.wait())
            .await
            .expect("exits in time")
            .expect("wait")
    }
}

/// Whether `/readyz` answers 200 (false while nothing listens).
async fn readyz(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let req = "GET /readyz HTTP/1.1\r\nHost: replica\r\nConnection: close\r\n\r\n";
    let mut raw = Vec::new();
    s.write_all(req.as_bytes()).await.is_ok()
        && timeout(WAIT, s.read_to_end(&mut raw)).await.is_ok()
        && raw.starts_with(b"HTTP/1.1 200")
}

async fn first_hello(ws: &mut support::Ws) -> ServerMessage {
    loop {
        let msg = timeout(WAIT, ws.next())
            .await
            .expect("hello in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            let m: ServerMessage = serde_json::from_str(t.as_str()).expect("a ServerMessage");
            if matches!(m, ServerMessage::Hello { .. }) {
                return m;
            }
        }
    }
}

/// What one viewer has, kept like the page keeps it.
#[derive(Debug, Default)]
struct Seen {
    /// `(event_id, seq)` of every event received, in order (duplicates included: they fail).
    events: Vec<(String, u64)>,
    /// The cards shown, by event id (the page's book: upsert on new/update, remove on end).
    cards: BTreeMap<String, u64>,
    /// Chat message ids, oldest first, deduplicated by id.
    chat: Vec<String>,
    /// The cursor: epoch and one past the last offset seen.
    epoch: Option<String>,
    next: Option<u64>,
    hellos: usize,
    reconnects: usize,
    resyncs: usize,
}

impl Seen {
    fn apply(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::Hello {
                epoch,
                offset,
                resync,
                onscreen,
                ..
            } => {
                let recovered = self.hellos > 0 && !resync && self.epoch.as_deref() == Some(&epoch);
                if self.hellos > 0 && !recovered {
                    self.resyncs += 1;
                }
                if !recovered {
                    self.cards.clear();
                }
                for c in onscreen {
                    self.cards.insert(c.event_id, c.seq);
                }
                self.epoch = Some(epoch);
                self.next = Some(offset);
                self.hellos += 1;
            }
            ServerMessage::Event { offset, card } => {
                if self.next.is_none_or(|n| offset >= n) {
                    self.next = Some(offset + 1);
                }
                match card.kind {
                    EventType::End => {
                        self.cards.remove(&card.event_id);
                    }
                    _ => {
                        self.cards.insert(card.event_id.clone(), card.seq);
                    }
                }
                self.events.push((card.event_id, card.seq));
            }
            ServerMessage::ChatHistory { messages } => {
                // Deduplicated by id and merged: a replica that restarted holds only the chat
                // since its start (chat is not retained on the broker), so replacing what is
                // shown with its history, as `ChatState` does today, would drop older messages.
                for m in messages {
                    if !self.chat.contains(&m.id) {
                        self.chat.push(m.id);
                    }
                }
            }
            ServerMessage::Chat { message } if !self.chat.contains(&message.id) => {
                self.chat.push(message.id);
            }
            _ => {}
        }
    }

    fn query(&self) -> String {
        match (&self.epoch, self.next) {
            (Some(e), Some(n)) => format!("?epoch={e}&offset={n}"),
            _ => String::new(),
        }
    }
}

/// A viewer through nginx: reconnects with its cursor whenever its socket ends, until `stop`.
async fn viewer(
    url: String,
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut first = true;
    while !stop.is_cancelled() {
        let query = seen.lock().expect("lock").query();
        if !first {
            seen.lock().expect("lock").reconnects += 1;
        }
        first = false;
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            c = tokio_tungstenite::connect_async(format!("{url}{query}")) => c,
        };
        let Ok((mut ws, _)) = connected else {
            // nginx found no replica to take it (all were restarting): as the page's backoff.
            tokio::time::sleep(POLL).await;
            continue;
        };
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => { let _ = ws.close(None).await; return; }
                n = ws.next() => n,
            };
            match next {
                Some(Ok(Message::Text(t))) => {
                    let msg: ServerMessage =
                        serde_json::from_str(t.as_str()).expect("a ServerMessage");
                    seen.lock().expect("lock").apply(msg);
                    changed.notify_waiters();
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
    }
}

/// The agent's side: events (QoS 1, one session, increasing seq), the retained on-screen
/// snapshot after each, and chat messages as a bridge publishes them.
struct Agent {
    client: AsyncClient,
    seq: u64,
    onscreen: BTreeMap<String, u64>,
    /// `(event_id, seq)` of every event a bridge accepts, in order.
    accepted: Vec<(String, u64)>,
    chat: Vec<String>,
    appearances: u64,
}

impl Agent {
    /// The seq of the last event the bridges accept.
    fn last_accepted(&self) -> u64 {
        self.accepted.last().map_or(0, |e| e.1)
    }

    async fn event(&mut self, kind: EventType, id: &str, sku: &str) {
        self.seq += 1;
        let seq = self.seq;
        support::publish_event(&self.client, event(kind, id, seq, sku)).await;
        if sku != "MUG-001" {
            // refused by every bridge: a gap in the offsets
            return;
        }
        self.accepted.push((id.to_owned(), seq));
        match kind {
            EventType::End => {
                self.onscreen.remove(id);
            }
            _ => {
                self.onscreen.insert(id.to_owned(), seq);
            }
        }
        let snapshot = OnScreen {
            v: PROTOCOL_VERSION,
            seq,
            session: Some(SESSION.into()),
            products: self
                .onscreen
                .keys()
                .map(|id| OnScreenProduct {
                    event_id: id.clone(),
                    sku: "MUG-001".into(),
                    score: 0.875,
                    bbox: BBox([0.25, 0.125, 0.75, 0.875]),
                    since_ms: 1_764_072_000_000,
                })
                .collect(),
        };
        self.client
            .publish(ONSCREEN, QoS::AtLeastOnce, true, snapshot.encode())
            .await
            .expect("queued");
    }

    /// One step of the show: an appearance starts, is updated, ends; now and then a refused
    /// event and a chat message.
    async fn step(&mut self) {
        self.appearances += 1;
        let n = self.appearances;
        let id = format!("app-{n}");
        match n % 3 {
            0 => self.event(EventType::New, &id, "MUG-001").await,
            1 => {
                self.event(EventType::New, &id, "MUG-001").await;
                self.event(EventType::Update, &id, "MUG-001").await;
            }
            _ => {
                self.event(EventType::New, &id, "MUG-001").await;
                self.event(EventType::End, &id, "MUG-001").await;
            }
        }
        if n.is_multiple_of(7) {
            self.event(EventType::New, &format!("unknown-{n}"), "NOPE-1")
                .await;
        }
        if n.is_multiple_of(4) && self.chat.len() < 40 {
            let id = format!("m-{n}");
            let msg = ChatEvent::Message {
                v: PROTOCOL_VERSION,
                message: ChatMessage {
                    id: id.clone(),
                    user: ChatUser {
                        id: "u1".into(),
                        name: "Alice".into(),
                        moderator: false,
                        guest: false,
                    },
                    text: format!("message {n}"),
                    at_ms: 1_764_072_000_000 + n,
                },
            };
            self.client
                .publish(CHAT, QoS::AtLeastOnce, false, msg.encode())
                .await
                .expect("queued");
            self.chat.push(id);
        }
    }
}

/// Until every viewer has every accepted event up to `last_seq` and `chat` chat messages.
async fn caught_up(
    viewers: &[Arc<Mutex<Seen>>],
    changed: &Notify,
    last_seq: u64,
    chat: usize,
    what: &str,
) {
    let done = || {
        viewers.iter().all(|v| {
            let v = v.lock().expect("lock");
            v.next.is_some_and(|n| n > last_seq) && v.chat.len() >= chat
        })
    };
    let waited = timeout(PHASE, async {
        loop {
            let notified = changed.notified();
            if done() {
                return;
            }
            // A viewer may be between sockets: look again when anything arrives, or soon.
            let _ = timeout(Duration::from_millis(200), notified).await;
        }
    })
    .await;
    if waited.is_err() {
        let behind: Vec<String> = viewers
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let v = v.lock().expect("lock");
                (v.next.is_none_or(|n| n <= last_seq) || v.chat.len() < chat)
                    .then(|| format!("viewer {i}: next {:?}, chat {}", v.next, v.chat.len()))
            })
            .collect();
        panic!("{what}: viewers did not catch up to seq {last_seq}: {behind:?}");
    }
}

/// Every viewer has exactly the accepted events (each once), the cards on screen, and the chat
/// in the broker's order.
fn check(viewers: &[Arc<Mutex<Seen>>], agent: &Agent, what: &str) {
    let want: HashSet<&(String, u64)> = agent.accepted.iter().collect();
    for (i, v) in viewers.iter().enumerate() {
        let v = v.lock().expect("lock");
        assert_eq!(v.resyncs, 0, "{what}: viewer {i} was told to resync");
        // It joined after the show began: everything since its first hello.
        let first = v.events.first().map_or(u64::MAX, |e| e.1);
        let want_here: Vec<&(String, u64)> =
            agent.accepted.iter().filter(|e| e.1 >= first).collect();
        let mut got = v.events.clone();
        let unique: HashSet<&(String, u64)> = got.iter().collect();
        assert_eq!(
            unique.len(),
            got.len(),
            "{what}: viewer {i} got an event twice"
        );
        assert!(
            got.iter().all(|e| want.contains(e)),
            "{what}: viewer {i} got an event never published"
        );
        got.sort_by_key(|e| e.1);
        let want_here: Vec<(String, u64)> = want_here.into_iter().cloned().collect();
        assert_eq!(got, want_here, "{what}: viewer {i} missed events");
        let cards: BTreeMap<String, u64> = agent.onscreen.clone();
        assert_eq!(
            v.cards.keys().collect::<Vec<_>>(),
            cards.keys().collect::<Vec<_>>(),
            "{what}: viewer {i}'s cards"
        );
        assert_eq!(v.chat, agent.chat, "{what}: viewer {i}'s chat");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_lose_nothing_when_a_replica_is_killed_or_restarted() {
    let started = Instant::now();
    let root = tempfile::tempdir().expect("tempdir");
    write_catalog(&root.path().join("catalog"));
    let broker = Broker::start();
    let mut replicas: Vec<Replica> = (0..3)
        .map(|i| Replica::new(root.path(), i, broker.port))
        .collect();
    for r in &mut replicas {
        r.spawn();
    }
    let nginx = Nginx::start(&replicas.iter().map(|r| r.http).collect::<Vec<_>>());

    let (client, _mqtt) = mqtt_client(broker.port, "agent");
    let mut agent = Agent {
        client,
        seq: 0,
        onscreen: BTreeMap::new(),
        accepted: Vec::new(),
        chat: Vec::new(),
        appearances: 0,
    };
    // The show has begun before anyone watches: the replicas know the session.
    agent.step().await;
    for r in &replicas {
        r.ready().await;
    }

    let stop = CancellationToken::new();
    let changed = Arc::new(Notify::new());
    let url = format!("ws://127.0.0.1:{}/ws/demo/main", nginx.port);
    let viewers: Vec<Arc<Mutex<Seen>>> = (0..VIEWERS)
        .map(|_| Arc::new(Mutex::new(Seen::default())))
        .collect();
    let tasks: Vec<_> = viewers
        .iter()
        .map(|v| {
            tokio::spawn(viewer(
                url.clone(),
                v.clone(),
                changed.clone(),
                stop.clone(),
            ))
        })
        .collect();
    timeout(PHASE, async {
        while !viewers.iter().all(|v| v.lock().expect("lock").hellos > 0) {
            let _ = timeout(Duration::from_millis(200), changed.notified()).await;
        }
    })
    .await
    .expect("every viewer has its hello");

    // Mid-show, one replica dies without a word.
    for _ in 0..10 {
        agent.step().await;
    }
    replicas[0].signal("-KILL");
    for _ in 0..20 {
        agent.step().await;
    }
    replicas[0].wait_exit().await;
    caught_up(
        &viewers,
        &changed,
        agent.last_accepted(),
        agent.chat.len(),
        "after SIGKILL",
    )
    .await;
    check(&viewers, &agent, "after SIGKILL");
    let killed_moved: usize = viewers
        .iter()
        .map(|v| v.lock().expect("lock").reconnects)
        .sum();
    assert!(
        (1..=VIEWERS).contains(&killed_moved),
        "the killed replica's viewers moved ({killed_moved} reconnects)"
    );
    replicas[0].spawn();
    replicas[0].ready().await;

    // A rolling restart while the show goes on: each replica drains (1012) and comes back.
    let before: Vec<usize> = viewers
        .iter()
        .map(|v| v.lock().expect("lock").reconnects)
        .collect();
    #[allow(
        clippy::needless_range_loop,
        reason = "each step names the replica it restarts"
    )]
    for i in 0..replicas.len() {
        // Everything the restarted replica started from has reached every viewer, so no
        // viewer's position lies before what it holds.
        caught_up(
            &viewers,
            &changed,
            agent.last_accepted(),
            agent.chat.len(),
            "before a restart",
        )
        .await;
        agent.step().await;
        replicas[i].signal("-TERM");
        for _ in 0..5 {
            agent.step().await;
        }
        let status = replicas[i].wait_exit().await;
        assert!(status.success(), "replica {i} drained cleanly: {status}");
        replicas[i].spawn();
        replicas[i].ready().await;
        for _ in 0..5 {
            agent.step().await;
        }
    }
    caught_up(
        &viewers,
        &changed,
        agent.last_accepted(),
        agent.chat.len(),
        "after the rolling restart",
    )
    .await;
    check(&viewers, &agent, "after the rolling restart");
    let moved: Vec<usize> = viewers
        .iter()
        .zip(&before)
        .map(|(v, b)| v.lock().expect("lock").reconnects - b)
        .collect();
    assert!(
        moved.iter().all(|&m| m >= 1),
        "every viewer's replica restarted, so every viewer moved: {moved:?}"
    );

    stop.cancel();
    for t in tasks {
        t.await.expect("viewer task");
    }
    let reconnects: usize = viewers
        .iter()
        .map(|v| v.lock().expect("lock").reconnects)
        .sum();
    println!(
        "replicas: {VIEWERS} viewers, {reconnects} reconnects ({killed_moved} after SIGKILL, {} in the rolling restart), {} events published ({} accepted), {} chat messages, {:.1} s",
        moved.iter().sum::<usize>(),
        agent.seq,
        agent.accepted.len(),
        agent.chat.len(),
        started.elapsed().as_secs_f64()
    );
    for r in &mut replicas {
        r.signal("-TERM");
        r.wait_exit().await;
    }
    drop(nginx);
    drop(broker);
}
