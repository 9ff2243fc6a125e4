//! The bridge's configuration: a TOML file, then `SPOTTER_BRIDGE__*` environment overrides,
//! parsed into raw serde structs and validated into typed values.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use spotter_mqtt_link::{Endpoint, TlsSettings};
use spotter_protocol::topic::validate_segment;

use crate::chat::config::process_env;
use crate::chat::{ChatConfig, RawChat};

/// Prefix of the environment variables that override the file (`SPOTTER_BRIDGE__HTTP__LISTEN`).
pub const ENV_PREFIX: &str = "SPOTTER_BRIDGE";
/// Separator between the prefix and the levels of a key in those variables.
pub const ENV_SEPARATOR: &str = "__";

/// Why a configuration was refused; every message names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing, not TOML, has an unknown key or a value of the wrong type.
    #[error(transparent)]
    Load(#[from] config::ConfigError),
    /// A value of the right type that is not acceptable.
    #[error("`{key}`: {reason}")]
    Invalid {
        /// The key at fault, as written in the file (`viewer.queue`, `stream[2].studio`).
        key: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The file as written. Relative paths are resolved against the directory of the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The viewer-facing HTTP server.
    #[serde(default)]
    pub http: RawHttp,
    /// Where product events come from.
    #[serde(default)]
    pub mqtt: RawMqtt,
    /// The product catalog.
    #[serde(default)]
    pub catalog: RawCatalog,
    /// Extra files the viewer page needs.
    #[serde(default)]
    pub web: RawWeb,
    /// The studios and streams this bridge serves (`[[stream]]`); events for others are refused.
    #[serde(default, rename = "stream")]
    pub streams: Vec<RawStream>,
    /// Limits on viewer connections.
    #[serde(default)]
    pub viewer: RawViewer,
    /// Chat beside the video.
    #[serde(default)]
    pub chat: RawChat,
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Address the HTTP server (page, WebSocket, images, metrics) listens on.
    #[serde(default = "default_http_listen")]
    pub listen: String,
    /// Seconds a client has to send a request's headers, from when the connection opens or the
    /// previous response was sent; then the connection is closed (slow and silent clients).
    #[serde(default = "default_header_timeout_secs")]
    pub header_timeout_secs: u64,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            listen: default_http_listen(),
            header_timeout_secs: default_header_timeout_secs(),
        }
    }
}

fn default_header_timeout_secs() -> u64 {
    10
}

fn default_http_listen() -> String {
    "127.0.0.1:8080".into()
}

/// `[mqtt]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    /// Run the embedded broker in this process (the one-box set-up).
    #[serde(default = "default_true")]
    pub embedded: bool,
    /// Where the embedded broker listens (plain MQTT 3.1.1 over TCP).
    #[serde(default = "default_embedded_listen")]
    pub embedded_listen: String,
    /// The broker to subscribe to; defaults to the embedded one. `mqtt://` or `tcp://` (plain,
    /// port 1883 by default), `mqtts://` or `ssl://` (TLS, port 8883 by default), then
    /// `host[:port]`; no path, query or credentials. The agent takes the same URLs.
    #[serde(default)]
    pub url: Option<String>,
    /// MQTT client id; defaults to `spotter-bridge-<random>` so replicas never collide. AWS IoT
    /// Core: a name the bridge's policy lets it connect as.
    #[serde(default)]
    pub client_id: Option<String>,
    /// MQTT keep-alive, seconds.
    #[serde(default = "default_keepalive_secs")]
    pub keepalive_secs: u64,
    /// For `mqtts://`: the CA certificate(s) the broker's certificate must chain to (PEM).
    /// Unset: the systemd credential `mqtt-ca`, else the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// For `mqtts://`: the bridge's certificate (PEM), for mutual TLS. Unset: the systemd
    /// credential `mqtt-cert`, if any.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// For `mqtts://`: the bridge's private key (PEM). A secret: keep it in the systemd
    /// credential `mqtt-key` (read when this is unset), not beside this file.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// For `mqtts://`: the ALPN protocol to offer; by default `x-amzn-mqtt-ca` on port 443
    /// (AWS IoT Core) and none elsewhere; `""` offers none.
    #[serde(default)]
    pub alpn: Option<String>,
}

impl Default for RawMqtt {
    fn default() -> Self {
        RawMqtt {
            embedded: true,
            embedded_listen: default_embedded_listen(),
            url: None,
            client_id: None,
            keepalive_secs: default_keepalive_secs(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            alpn: None,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_embedded_listen() -> String {
    "127.0.0.1:1883".into()
}

fn default_keepalive_secs() -> u64 {
    30
}

/// `[catalog]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCatalog {
    /// Directory holding `catalog.toml` and the product images.
    #[serde(default = "default_catalog_dir")]
    pub dir: PathBuf,
}

impl Default for RawCatalog {
    fn default() -> Self {
        RawCatalog {
            dir: default_catalog_dir(),
        }
    }
}

fn default_catalog_dir() -> PathBuf {
    PathBuf::from("catalog")
}

/// `[web]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    /// Directory holding the page's players (`amazon-ivs-player.js` with its wasm worker and
    /// binary, `hls.min.js`), served at `/static/vendor/`: `npm run build` in `web/` writes it.
    #[serde(default)]
    pub vendor_dir: Option<PathBuf>,
    /// Directory of HLS playlists and segments served at `/hls/` (a demo stand-in for IVS).
    #[serde(default)]
    pub hls_dir: Option<PathBuf>,
}

/// One `[[stream]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    /// The studio (the MQTT topic's first level after `spotter/v1`).
    pub studio: String,
    /// The stream within the studio.
    pub stream: String,
    /// What the viewer page plays: an HLS playlist URL, absolute or starting with `/`.
    #[serde(default)]
    pub video_url: Option<String>,
}

/// `[viewer]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawViewer {
    /// Messages a viewer may fall behind before it is disconnected (it reconnects and recovers).
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Largest frame accepted from a viewer, bytes.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Events kept per stream so a reconnecting viewer gets what it missed.
    #[serde(default = "default_history")]
    pub history: usize,
    /// Most viewer sockets open at once (then HTTP 503); default, and at most: the open-files
    /// limit less a reserve for the broker, its clients and files.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Most viewer sockets open at once from one IP address (then HTTP 429); 0: no limit. Generous,
    /// because a NAT'd office or a mobile carrier puts many viewers behind one address. Behind a
    /// load balancer every viewer comes from the balancer's address: set 0 and limit on the
    /// balancer (forwarded headers are not trusted).
    #[serde(default = "default_max_per_address")]
    pub max_per_address: usize,
}

impl Default for RawViewer {
    fn default() -> Self {
        RawViewer {
            queue: default_queue(),
            max_message_bytes: default_max_message_bytes(),
            history: default_history(),
            max_connections: None,
            max_per_address: default_max_per_address(),
        }
    }
}

fn default_max_per_address() -> usize {
    64
}

fn default_queue() -> usize {
    256
}

fn default_max_message_bytes() -> usize {
    4096
}

fn default_history() -> usize {
    1024
}

/// A validated configuration: what [`crate::run`] takes.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The HTTP server.
    pub http: HttpConfig,
    /// The broker side.
    pub mqtt: MqttConfig,
    /// Catalog directory.
    pub catalog_dir: PathBuf,
    /// Optional directories served to the page.
    pub web: WebConfig,
    /// The accepted streams, in file order (the first is where `/` redirects).
    pub streams: Vec<StreamConfig>,
    /// Viewer limits.
    pub viewer: ViewerConfig,
    /// `viewer.max_connections`: at most this many viewer sockets (the open-files limit applies
    /// in any case).
    pub max_viewers: Option<usize>,
    /// `viewer.max_per_address`: at most this many viewer sockets from one IP address (0: no
    /// limit).
    pub max_per_address: usize,
    /// Chat settings and key.
    pub chat: ChatConfig,
}

/// Validated `[http]`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
}

/// Validated `[mqtt]`.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Where the embedded broker listens, when it runs.
    pub embedded: Option<SocketAddr>,
    /// The broker to subscribe to and how (plain, TLS, mutual TLS); shows as its URL and TLS
    /// mode.
    pub broker: Endpoint,
    /// Client id.
    pub client_id: String,
    /// Keep-alive interval.
    pub keepalive: Duration,
}

/// Validated `[web]`.
#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    /// Served at `/static/vendor/`.
    pub vendor_dir: Option<PathBuf>,
    /// Served at `/hls/`.
    pub hls_dir: Option<PathBuf>,
}

/// Validated `[[stream]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// Studio.
    pub studio: String,
    /// Stream.
    pub stream: String,
    /// What the page plays.
    pub video_url: Option<String>,
}

/// Validated `[viewer]`.
#[derive(Debug, Clone, Copy)]
pub struct ViewerConfig {
    /// Messages a viewer may fall behind.
    pub queue: usize,
    /// Largest client frame, bytes.
    pub max_message_bytes: usize,
    /// Events kept per stream.
    pub history: usize,
}

impl BridgeConfig {
    /// Loads `path`, applies the `SPOTTER_BRIDGE__*` environment, and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, None)
    }

    /// Like [`BridgeConfig::load`], with the environment given as a map (for tests).
    pub fn load_with_env(
        path: &Path,
        env: Option<config::Map<String, String>>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .separator(ENV_SEPARATOR)
                    .source(env),
            )
            .build()?
            .try_deserialize()?;
        let base = path.parent().unwrap_or_else(|| Path::new(""));
        raw.validate(base)
    }

    /// Parses TOML text without the environment; relative paths resolve against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        raw.validate(base)
    }
}

impl RawConfig {
    /// Checks every value and resolves relative paths against `base`.
    pub fn validate(self, base: &Path) -> Result<BridgeConfig, ConfigError> {
        let listen = parse_addr("http.listen", &self.http.listen)?;
        if !(1..=600).contains(&self.http.header_timeout_secs) {
            return Err(invalid(
                "http.header_timeout_secs",
                format!(
                    "{} is out of range: use 1-600",
                    self.http.header_timeout_secs
                ),
            ));
        }
        let header_timeout = Duration::from_secs(self.http.header_timeout_secs);
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        let mqtt = self.mqtt.validate(base, credentials.as_deref())?;

        let mut streams = Vec::with_capacity(self.streams.len());
        let mut seen = HashSet::new();
        for (i, s) in self.streams.into_iter().enumerate() {
            let key = |field: &str| format!("stream[{}].{field}", i + 1);
            validate_segment("studio", &s.studio)
                .map_err(|e| invalid(key("studio"), e.to_string()))?;
            validate_segment("stream", &s.stream)
                .map_err(|e| invalid(key("stream"), e.to_string()))?;
            if !seen.insert((s.studio.clone(), s.stream.clone())) {
                return Err(invalid(
                    key("stream"),
                    format!(
                        "{}/{} is listed twice: list each stream once",
                        s.studio, s.stream
                    ),
                ));
            }
            if let Some(url) = &s.video_url {
                check_video_url(url).map_err(|r| invalid(key("video_url"), r))?;
            }
            streams.push(StreamConfig {
                studio: s.studio,
                stream: s.stream,
                video_url: s.video_url,
            });
        }
        if streams.is_empty() {
            return Err(invalid(
                "stream",
                "no streams: add at least one [[stream]] with studio and stream",
            ));
        }

        let v = self.viewer;
        check_range("viewer.queue", v.queue, 1, 1 << 20)?;
        check_range("viewer.max_message_bytes", v.max_message_bytes, 64, 1 << 20)?;
        check_range("viewer.history", v.history, 0, 1 << 20)?;
        if let Some(m) = v.max_connections {
            check_range("viewer.max_connections", m, 1, 1 << 24)?;
        }
        check_range("viewer.max_per_address", v.max_per_address, 0, 1 << 24)?;

        let chat = self
            .chat
            .validate(base, &process_env)
            .map_err(|e| invalid(e.key, e.reason))?;

        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        Ok(BridgeConfig {
            http: HttpConfig {
                listen,
                header_timeout,
            },
            mqtt,
            catalog_dir: resolve(self.catalog.dir),
            web: WebConfig {
                vendor_dir: self.web.vendor_dir.map(resolve),
                hls_dir: self.web.hls_dir.map(resolve),
            },
            streams,
            viewer: ViewerConfig {
                queue: v.queue,
                max_message_bytes: v.max_message_bytes,
                history: v.history,
            },
            max_viewers: v.max_connections,
            max_per_address: v.max_per_address,
            chat,
        })
    }
}

impl RawMqtt {
    /// `credentials`: `$CREDENTIALS_DIRECTORY`, for the TLS material not named in the file.
    fn validate(self, base: &Path, credentials: Option<&Path>) -> Result<MqttConfig, ConfigError> {
        let embedded_listen = parse_addr("mqtt.embedded_listen", &self.embedded_listen)?;
        let resolve = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            }
        };
        let tls = TlsSettings {
            ca_file: self.ca_file.as_ref().map(resolve),
            cert_file: self.cert_file.as_ref().map(resolve),
            key_file: self.key_file.as_ref().map(resolve),
            alpn: self.alpn.clone(),
        };
        let broker = match (&self.url, self.embedded) {
            // one parser and one TLS set-up with the agent's (`spotter-mqtt-link`)
            (Some(url), _) => Endpoint::from_settings(url, &tls, credentials)
                .map_err(|e| invalid(e.key, e.reason))?,
            (None, _) if tls.any_set() => {
                return Err(invalid(
                    "mqtt.url",
                    "TLS keys (ca_file, cert_file, key_file, alpn) are set but no url: set mqtt.url to the broker's mqtts:// URL",
                ))
            }
            (None, true) => {
                // A wildcard listen address is not something to connect to: use loopback.
                let ip = match embedded_listen.ip() {
                    ip if ip.is_unspecified() && ip.is_ipv4() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    ip if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                    ip => ip,
                };
                Endpoint::plain(ip.to_string(), embedded_listen.port())
            }
            (None, false) => {
                return Err(invalid(
                    "mqtt.url",
                    "required when mqtt.embedded = false: set it to the broker, e.g. \"mqtt://broker:1883\"",
                ))
            }
        };
        let client_id = match self.client_id {
            Some(id) => {
                if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(invalid(
                        "mqtt.client_id",
                        format!("{id:?} must be 1-64 printable ASCII characters without spaces"),
                    ));
                }
                id
            }
            None => format!("spotter-bridge-{:08x}", fastrand::u32(..)),
        };
        if !(5..=3600).contains(&self.keepalive_secs) {
            return Err(invalid(
                "mqtt.keepalive_secs",
                format!(
                    "{} is out of range: use 5-3600 seconds",
                    self.keepalive_secs
                ),
            ));
        }
        Ok(MqttConfig {
            embedded: self.embedded.then_some(embedded_listen),
            broker,
            client_id,
            keepalive: Duration::from_secs(self.keepalive_secs),
        })
    }
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!(
                "{value:?} is not an IP address and port like \"127.0.0.1:8080\" or \"[::]:8080\""
            ),
        )
    })
}

fn check_range(key: &str, value: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{value} is out of range: use {min}-{max}"),
        ))
    }
}

fn check_video_url(url: &str) -> Result<(), String> {
    let ok = url.starts_with("https://")
        || url.starts_with("http://")
        || (url.starts_with('/') && !url.starts_with("//"));
    if ok
        && !url
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        Ok(())
    } else {
        Err(format!(
            "{url:?} must be an http(s) URL or a path starting with \"/\", without spaces"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../bridge.example.toml");

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("bridge.example.toml")
    }

    #[test]
    fn shipped_example_parses_and_validates() {
        let c = BridgeConfig::load_with_env(&example_path(), Some(config::Map::new()))
            .expect("the example config is valid");
        assert_eq!(c.http.listen, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(
            c.mqtt.embedded,
            Some("127.0.0.1:1883".parse().expect("addr"))
        );
        assert_eq!(
            c.mqtt.broker.to_string(),
            "mqtt://127.0.0.1:1883 (plain TCP)"
        );
        assert_eq!(c.streams[0].studio, "demo");
        assert_eq!(c.streams[0].stream, "main");
        assert_eq!(c.viewer.queue, 256);
        assert_eq!(c.viewer.max_message_bytes, 4096);
        assert_eq!(c.viewer.history, 1024);
        assert_eq!(c.max_per_address, 64);
        assert_eq!(c.http.header_timeout, Duration::from_secs(10));
        assert!(c.chat.enabled && !c.chat.guests);
        assert_eq!(c.chat.limits.max_chars, 500);
        assert_eq!(c.chat.limits.history, 50);
        // Relative paths are relative to the file, not to wherever the bridge was started.
        assert_eq!(
            c.catalog_dir,
            Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog")
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = config::Map::from([
            (
                "SPOTTER_BRIDGE__HTTP__LISTEN".to_owned(),
                "0.0.0.0:9000".to_owned(),
            ),
            ("SPOTTER_BRIDGE__VIEWER__QUEUE".to_owned(), "32".to_owned()),
            (
                "SPOTTER_BRIDGE__MQTT__EMBEDDED".to_owned(),
                "false".to_owned(),
            ),
            (
                "SPOTTER_BRIDGE__MQTT__URL".to_owned(),
                "mqtt://broker.internal".to_owned(),
            ),
            (
                "SPOTTER_BRIDGE__MQTT__CLIENT_ID".to_owned(),
                "1234".to_owned(),
            ),
            // Not ours: a single underscore after the prefix.
            ("SPOTTER_BRIDGE_CONFIG".to_owned(), "/etc/x.toml".to_owned()),
        ]);
        let c = BridgeConfig::load_with_env(&example_path(), Some(env)).expect("valid");
        assert_eq!(c.http.listen, "0.0.0.0:9000".parse().expect("addr"));
        assert_eq!(c.viewer.queue, 32);
        assert_eq!(c.mqtt.embedded, None);
        assert_eq!(c.mqtt.broker, Endpoint::plain("broker.internal", 1883));
        assert_eq!(c.mqtt.client_id, "1234");
    }

    #[test]
    fn typo_in_a_key_is_named() {
        let text = EXAMPLE.replace("max_message_bytes", "max_mesage_bytes");
        let err = BridgeConfig::from_toml(&text, Path::new("")).expect_err("typo");
        assert!(err.to_string().contains("max_mesage_bytes"), "{err}");

        let err = BridgeConfig::from_toml("[htp]\nlisten = \"127.0.0.1:1\"\n", Path::new(""))
            .expect_err("typo'd table");
        assert!(err.to_string().contains("htp"), "{err}");
    }

    #[test]
    fn per_address_limit_can_be_turned_off() {
        let c = BridgeConfig::from_toml(
            "[viewer]\nmax_per_address = 0\n[[stream]]\nstudio = \"demo\"\nstream = \"main\"\n",
            Path::new(""),
        )
        .expect("valid");
        assert_eq!(c.max_per_address, 0);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[http]\nlisten = \"localhost\"\n", "http.listen"),
            ("[viewer]\nqueue = 0\n", "viewer.queue"),
            (
                "[http]\nheader_timeout_secs = 0\n",
                "http.header_timeout_secs",
            ),
            ("[mqtt]\nurl = \"mqtts://x:0\"\n", "mqtt.url"),
            (
                "[mqtt]\nurl = \"mqtt://x\"\nca_file = \"ca.pem\"\n",
                "mqtt.url",
            ),
            ("[mqtt]\ncert_file = \"c.pem\"\n", "mqtt.url"),
            (
                "[mqtt]\nurl = \"mqtts://x\"\nca_file = \"/nonexistent/ca.pem\"\n",
                "mqtt.ca_file",
            ),
            ("[mqtt]\nembedded = false\n", "mqtt.url"),
            ("[mqtt]\nclient_id = \"a b\"\n", "mqtt.client_id"),
        ];
        let stream = "\n[[stream]]\nstudio = \"demo\"\nstream = \"main\"\n";
        for (text, key) in cases {
            let err =
                BridgeConfig::from_toml(&format!("{text}{stream}"), Path::new("")).expect_err(key);
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
        let err = BridgeConfig::from_toml("", Path::new("")).expect_err("no stream");
        assert!(err.to_string().contains("[[stream]]"), "{err}");
        let err = BridgeConfig::from_toml(
            "[[stream]]\nstudio = \"demo\"\nstream = \"main\"\n[[stream]]\nstudio = \"de mo\"\nstream = \"x\"\n",
            Path::new(""),
        )
        .expect_err("bad studio");
        assert!(err.to_string().contains("stream[2].studio"), "{err}");
        let err = BridgeConfig::from_toml(
            "[[stream]]\nstudio = \"demo\"\nstream = \"main\"\nvideo_url = \"javascript:alert(1)\"\n",
            Path::new(""),
        )
        .expect_err("bad url");
        assert!(err.to_string().contains("stream[1].video_url"), "{err}");
    }

    #[test]
    fn broker_urls_get_the_same_answers_as_the_agent() {
        use spotter_mqtt_link::broker_url::examples::assert_same_answers;
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = spotter_mqtt_link::testing::make_certificates(dir.path(), "bridge");
        let with = |url: &str, tls: bool| {
            let ca = if tls { "ca_file = \"ca.crt\"\n" } else { "" };
            BridgeConfig::from_toml(
                &format!("[mqtt]\nembedded = false\nurl = \"{url}\"\n{ca}[[stream]]\nstudio = \"a\"\nstream = \"b\"\n"),
                dir.path(),
            )
        };
        assert_same_answers(|url, tls| with(url, tls).map(|c| c.mqtt.broker));
        // the TLS files resolve against the file's directory, like every path in it
        let c = with("mqtts://h:443", true).expect("tls");
        assert_eq!(
            c.mqtt.broker.to_string(),
            format!(
                "mqtts://h:443 (TLS, CA {}, no client certificate, ALPN x-amzn-mqtt-ca)",
                certs.ca.display()
            )
        );
    }

    #[test]
    fn the_example_iot_policy_lets_the_bridge_publish_only_chat_and_bans() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/aws-iot-policy.json");
        let text = std::fs::read_to_string(path).expect("the example policy");
        let policy: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let resources = |action: &str| -> Vec<String> {
            let statements = policy["Statement"].as_array().expect("statements");
            statements
                .iter()
                .filter(|s| s["Effect"] == "Allow" && s["Action"] == action)
                .flat_map(|s| match &s["Resource"] {
                    serde_json::Value::Array(a) => a.clone(),
                    one => vec![one.clone()],
                })
                .map(|r| r.as_str().expect("a resource").to_owned())
                .collect()
        };
        let ends = |action: &str| -> Vec<String> {
            resources(action)
                .iter()
                .map(|r| {
                    r.rsplit_once(":topic")
                        .map_or(r.clone(), |(_, t)| t.to_owned())
                })
                .collect()
        };
        assert_eq!(
            ends("iot:Publish"),
            ["/spotter/v1/*/*/chat", "/spotter/v1/*/*/ban/*"]
        );
        assert_eq!(ends("iot:RetainPublish"), ["/spotter/v1/*/*/ban/*"]);
        let subscribed = resources("iot:Subscribe");
        for kind in ["events", "onscreen", "chat", "ban/+"] {
            assert!(
                subscribed
                    .iter()
                    .any(|r| r.ends_with(&format!("/+/+/{kind}"))),
                "{kind}: {subscribed:?}"
            );
        }
        assert_eq!(resources("iot:Receive").len(), 4);
        assert_eq!(
            resources("iot:Connect"),
            ["arn:aws:iot:REGION:ACCOUNT_ID:client/${iot:Connection.Thing.ThingName}"]
        );
    }

    #[test]
    fn embedded_wildcard_listen_connects_over_loopback() {
        let c = BridgeConfig::from_toml(
            "[mqtt]\nembedded_listen = \"0.0.0.0:1999\"\n[[stream]]\nstudio = \"a\"\nstream = \"b\"\n",
            Path::new(""),
        )
        .expect("valid");
        assert_eq!(
            c.mqtt.broker.to_string(),
            "mqtt://127.0.0.1:1999 (plain TCP)"
        );
        assert!(c.mqtt.client_id.starts_with("spotter-bridge-"));
    }
}
