//! The TLS side of a broker link: where the CA, the client certificate and its key come from
//! (files named in `[mqtt]`, else systemd credentials, else, for the CA only, the system's
//! roots), and the one rustls `ClientConfig` both binaries connect with, built at start so a
//! bad file fails `validate`, not the first connection.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// The ALPN protocol AWS IoT Core wants for MQTT with a client certificate on port 443.
pub const ALPN_AWS_IOT: &str = "x-amzn-mqtt-ca";
/// The port on which the ALPN protocol defaults to [`ALPN_AWS_IOT`].
pub const ALPN_PORT: u16 = 443;
/// The systemd credential (`LoadCredential=mqtt-ca:...`) read when `mqtt.ca_file` is unset.
pub const CREDENTIAL_CA: &str = "mqtt-ca";
/// The systemd credential read when `mqtt.cert_file` is unset.
pub const CREDENTIAL_CERT: &str = "mqtt-cert";
/// The systemd credential read when `mqtt.key_file` is unset.
pub const CREDENTIAL_KEY: &str = "mqtt-key";

/// A TLS setting that cannot be used, with the `[mqtt]` key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {reason}")]
pub struct LinkError {
    /// The key, as written in the file (`mqtt.url`, `mqtt.key_file`).
    pub key: &'static str,
    /// What is wrong and what to do.
    pub reason: String,
}

pub(crate) fn invalid(key: &'static str, reason: impl Into<String>) -> LinkError {
    LinkError {
        key,
        reason: reason.into(),
    }
}

/// The TLS keys of `[mqtt]` as written, relative paths already resolved by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// `ca_file`: the CA certificate(s) the broker's certificate must chain to (PEM).
    pub ca_file: Option<PathBuf>,
    /// `cert_file`: this client's certificate (PEM), for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// `key_file`: this client's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// `alpn`: the ALPN protocol to offer; `""` offers none.
    pub alpn: Option<String>,
}

impl TlsSettings {
    /// Whether any TLS key is set (a plain URL with TLS keys is a mistake).
    pub fn any_set(&self) -> bool {
        self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.alpn.is_some()
    }
}

/// Where a piece of TLS material came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file named in the configuration.
    File(PathBuf),
    /// A systemd credential, by name.
    Credential(&'static str),
    /// The operating system's trusted roots.
    SystemRoots,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Credential(name) => write!(f, "credential {name}"),
            Source::SystemRoots => f.write_str("the system's roots"),
        }
    }
}

/// A TLS set-up ready to connect with: the rustls configuration and where it came from.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    ca: Source,
    client: Option<Source>,
    alpn: Option<String>,
}

impl Tls {
    /// Reads the CA, certificate and key named by `settings`, else the systemd credentials in
    /// `credentials` (`$CREDENTIALS_DIRECTORY`), else (CA only) the system's roots, and builds
    /// the client configuration. ALPN defaults to [`ALPN_AWS_IOT`] on port [`ALPN_PORT`].
    pub fn load(
        settings: &TlsSettings,
        port: u16,
        credentials: Option<&Path>,
    ) -> Result<Tls, LinkError> {
        let ca = find(
            "mqtt.ca_file",
            settings.ca_file.as_deref(),
            CREDENTIAL_CA,
            credentials,
        )?;
        let cert = find(
            "mqtt.cert_file",
            settings.cert_file.as_deref(),
            CREDENTIAL_CERT,
            credentials,
        )?;
        let key = find(
            "mqtt.key_file",
            settings.key_file.as_deref(),
            CREDENTIAL_KEY,
            credentials,
        )?;
        let client = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "mqtt.key_file",
                    format!("mutual TLS needs the certificate's private key: set mqtt.key_file or LoadCredential={CREDENTIAL_KEY}:..."),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "mqtt.cert_file",
                    format!("mutual TLS needs the key's certificate: set mqtt.cert_file or LoadCredential={CREDENTIAL_CERT}:..."),
                ))
            }
        };
        let alpn = match settings.alpn.as_deref() {
            Some("") => None,
            Some(a) => Some(a.to_owned()),
            None if port == ALPN_PORT => Some(ALPN_AWS_IOT.to_owned()),
            None => None,
        };
        let (ca_source, ca_pem) = match ca {
            Some((source, bytes)) => (source, Some(bytes)),
            None => (Source::SystemRoots, None),
        };
        let config = client_config(
            ca_pem.as_deref(),
            client
                .as_ref()
                .map(|((_, c), (_, k))| (c.as_slice(), k.as_slice())),
            alpn.as_deref(),
        )?;
        Ok(Tls {
            config: Arc::new(config),
            ca: ca_source,
            client: client.map(|((source, _), _)| source),
            alpn,
        })
    }

    /// The rustls configuration (rumqttc's `TlsConfiguration::Rustls`).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// Whether a client certificate is presented.
    pub fn mutual(&self) -> bool {
        self.client.is_some()
    }

    /// The ALPN protocol offered, if any.
    pub fn alpn(&self) -> Option<&str> {
        self.alpn.as_deref()
    }
}

impl fmt::Display for Tls {
    /// What `validate` shows: the mode, where each piece came from, the ALPN protocol.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.client {
            Some(c) => write!(f, "mutual TLS, CA {}, certificate {c}", self.ca)?,
            None => write!(f, "TLS, CA {}, no client certificate", self.ca)?,
        }
        match &self.alpn {
            Some(a) => write!(f, ", ALPN {a}"),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca)
            .field("client", &self.client)
            .field("alpn", &self.alpn)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Tls {
    fn eq(&self, other: &Tls) -> bool {
        (&self.ca, &self.client, &self.alpn) == (&other.ca, &other.client, &other.alpn)
    }
}

/// The file for `key`, else the credential `name`; `None` when neither is there.
fn find(
    key: &'static str,
    file: Option<&Path>,
    name: &'static str,
    credentials: Option<&Path>,
) -> Result<Option<(Source, Vec<u8>)>, LinkError> {
    if let Some(path) = file {
        let bytes = std::fs::read(path)
            .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
        return Ok(Some((Source::File(path.to_owned()), bytes)));
    }
    let Some(path) = credentials.map(|d| d.join(name)) else {
        return Ok(None);
    };
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some((Source::Credential(name), bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(invalid(
            key,
            format!("cannot read the credential {}: {e}", path.display()),
        )),
    }
}

/// The rustls configuration from PEM bytes: the CA (`None`: the system's roots), the client's
/// certificate chain and key for mutual TLS, and the ALPN protocol. Pure apart from reading the
/// system's roots when no CA is given.
pub fn client_config(
    ca: Option<&[u8]>,
    client: Option<(&[u8], &[u8])>,
    alpn: Option<&str>,
) -> Result<ClientConfig, LinkError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(pem) => {
            let certs = certificates("mqtt.ca_file", pem)?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(invalid(
                    "mqtt.ca_file",
                    "no usable CA certificate in it: give the PEM of the CA that signed the broker's certificate (AWS IoT Core: AmazonRootCA1.pem)",
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(invalid(
                    "mqtt.ca_file",
                    "no CA given and no system roots found: set mqtt.ca_file to the CA that signed the broker's certificate",
                ));
            }
        }
    }
    // ring as the provider, passed here rather than installed process-wide
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("mqtt.url", format!("cannot set up TLS: {e}")))?
            .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain = certificates("mqtt.cert_file", cert_pem)?;
            let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
                invalid(
                    "mqtt.key_file",
                    format!("no private key in it ({e}): give the PEM key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) that goes with mqtt.cert_file"),
                )
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                invalid(
                    "mqtt.key_file",
                    format!("this key cannot be used with mqtt.cert_file: {e}"),
                )
            })?
        }
    };
    if let Some(a) = alpn {
        if a.len() > 255 || a.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(invalid(
                "mqtt.alpn",
                format!("{a:?} must be 1-255 printable ASCII characters (AWS IoT Core on port 443: \"{ALPN_AWS_IOT}\")"),
            ));
        }
        config.alpn_protocols = vec![a.as_bytes().to_vec()];
    }
    Ok(config)
}

/// Every certificate in `pem`, at least one.
fn certificates(key: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, LinkError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            "no certificate in it: give a PEM file with -----BEGIN CERTIFICATE-----",
        ));
    }
    Ok(certs)
}
