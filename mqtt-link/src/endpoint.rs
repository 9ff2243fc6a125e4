//! The broker to connect to and how: its URL and, for `mqtts://`, the TLS set-up; and the
//! rumqttc options both binaries start from.

use std::fmt;
use std::path::Path;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};

use crate::broker_url::BrokerUrl;
use crate::tls::{invalid, LinkError, Tls, TlsSettings};

/// A validated broker link.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    url: BrokerUrl,
    tls: Option<Tls>,
}

impl Endpoint {
    /// The `[mqtt]` settings as written: `url` and the TLS keys; `credentials` is
    /// `$CREDENTIALS_DIRECTORY` (systemd), where `mqtt-ca`, `mqtt-cert` and `mqtt-key` are
    /// looked for when the matching `*_file` key is unset.
    pub fn from_settings(
        url: &str,
        tls: &TlsSettings,
        credentials: Option<&Path>,
    ) -> Result<Endpoint, LinkError> {
        let url = BrokerUrl::parse(url).map_err(|e| invalid("mqtt.url", e.to_string()))?;
        if !url.tls {
            if tls.any_set() {
                return Err(invalid(
                    "mqtt.url",
                    format!("{url} is plain TCP but TLS keys (ca_file, cert_file, key_file, alpn) are set: use an mqtts:// URL, or remove them"),
                ));
            }
            return Ok(Endpoint { url, tls: None });
        }
        let tls = Tls::load(tls, url.port, credentials)?;
        Ok(Endpoint {
            url,
            tls: Some(tls),
        })
    }

    /// A plain-TCP broker at `host:port` (the bridge's embedded broker).
    pub fn plain(host: impl Into<String>, port: u16) -> Endpoint {
        Endpoint {
            url: BrokerUrl {
                host: host.into(),
                port,
                tls: false,
            },
            tls: None,
        }
    }

    /// The broker's address.
    pub fn url(&self) -> &BrokerUrl {
        &self.url
    }

    /// Host name or IP address.
    pub fn host(&self) -> &str {
        &self.url.host
    }

    /// TCP port.
    pub fn port(&self) -> u16 {
        self.url.port
    }

    /// The TLS set-up, for `mqtts://`.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// rumqttc options for `client_id` on this link (transport set; keep-alive, session and
    /// the rest are the caller's).
    pub fn options(&self, client_id: impl Into<String>) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, self.url.host.clone(), self.url.port);
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.client_config(),
            )));
        }
        options
    }
}

impl fmt::Display for Endpoint {
    /// `mqtts://host:8883 (mutual TLS, CA ..., certificate ..., ALPN ...)` or
    /// `mqtt://host:1883 (plain TCP)`: what `validate` and the logs show.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tls {
            Some(tls) => write!(f, "{} ({tls})", self.url),
            None => write!(f, "{} (plain TCP)", self.url),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::testing::{make_certificates, Certificates};

    fn settings(certs: &Certificates, client: bool) -> TlsSettings {
        TlsSettings {
            ca_file: Some(certs.ca.clone()),
            cert_file: client.then(|| certs.client.0.clone()),
            key_file: client.then(|| certs.client.1.clone()),
            alpn: None,
        }
    }

    fn err(url: &str, tls: &TlsSettings, credentials: Option<&Path>) -> LinkError {
        Endpoint::from_settings(url, tls, credentials).expect_err(url)
    }

    #[test]
    fn plain_tls_and_mutual_tls_say_what_they_are() {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = make_certificates(dir.path(), "bridge-1");
        let plain =
            Endpoint::from_settings("tcp://h", &TlsSettings::default(), None).expect("plain");
        assert_eq!(plain.to_string(), "mqtt://h:1883 (plain TCP)");
        assert_eq!(plain, Endpoint::plain("h", 1883));

        let tls =
            Endpoint::from_settings("mqtts://h", &settings(&certs, false), None).expect("tls");
        let shown = tls.to_string();
        assert!(shown.starts_with("mqtts://h:8883 (TLS, CA "), "{shown}");
        assert!(
            shown.contains("no client certificate") && !shown.contains("ALPN"),
            "{shown}"
        );

        let mutual =
            Endpoint::from_settings("ssl://h:443", &settings(&certs, true), None).expect("mutual");
        let shown = mutual.to_string();
        assert!(
            shown.starts_with("mqtts://h:443 (mutual TLS, CA "),
            "{shown}"
        );
        assert!(
            shown.ends_with("client.crt, ALPN x-amzn-mqtt-ca)"),
            "{shown}"
        );
        assert_eq!(
            mutual.tls().expect("tls").client_config().alpn_protocols,
            vec![b"x-amzn-mqtt-ca".to_vec()]
        );
        // an empty alpn turns the port-443 default off
        let mut no_alpn = settings(&certs, true);
        no_alpn.alpn = Some(String::new());
        let e = Endpoint::from_settings("mqtts://h:443", &no_alpn, None).expect("no alpn");
        assert!(e.tls().expect("tls").alpn().is_none());
    }

    #[test]
    fn systemd_credentials_stand_in_for_unset_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = make_certificates(dir.path(), "bridge-1");
        let creds = dir.path().join("credentials");
        std::fs::create_dir(&creds).expect("mkdir");
        for (name, from) in [
            ("mqtt-ca", &certs.ca),
            ("mqtt-cert", &certs.client.0),
            ("mqtt-key", &certs.client.1),
        ] {
            std::fs::copy(from, creds.join(name)).expect("copy");
        }
        let e = Endpoint::from_settings("mqtts://h", &TlsSettings::default(), Some(&creds))
            .expect("from credentials");
        assert_eq!(
            e.to_string(),
            "mqtts://h:8883 (mutual TLS, CA credential mqtt-ca, certificate credential mqtt-cert)"
        );
        // a file named in the configuration wins over the credential
        let e = Endpoint::from_settings("mqtts://h", &settings(&certs, false), Some(&creds))
            .expect("file and credentials");
        assert!(
            e.to_string()
                .contains("ca.crt, certificate credential mqtt-cert"),
            "{e}"
        );
    }

    #[test]
    fn bad_tls_settings_name_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = make_certificates(dir.path(), "bridge-1");
        let missing = PathBuf::from("/nonexistent/ca.pem");

        let e = err("mqtt://h", &settings(&certs, true), None);
        assert_eq!(e.key, "mqtt.url");
        assert!(e.reason.contains("use an mqtts:// URL"), "{e}");

        let mut only_cert = settings(&certs, true);
        only_cert.key_file = None;
        assert_eq!(err("mqtts://h", &only_cert, None).key, "mqtt.key_file");
        let mut only_key = settings(&certs, true);
        only_key.cert_file = None;
        assert_eq!(err("mqtts://h", &only_key, None).key, "mqtt.cert_file");

        let mut unreadable = settings(&certs, false);
        unreadable.ca_file = Some(missing);
        let e = err("mqtts://h", &unreadable, None);
        assert_eq!(e.key, "mqtt.ca_file");
        assert!(e.reason.contains("/nonexistent/ca.pem"), "{e}");

        // a key where the CA should be, a certificate where the key should be
        let mut swapped = settings(&certs, true);
        swapped.ca_file = Some(certs.client.1.clone());
        assert_eq!(err("mqtts://h", &swapped, None).key, "mqtt.ca_file");
        let mut swapped = settings(&certs, true);
        swapped.key_file = Some(certs.client.0.clone());
        assert_eq!(err("mqtts://h", &swapped, None).key, "mqtt.key_file");
        // the server's key does not go with the client's certificate
        let mut mismatched = settings(&certs, true);
        mismatched.key_file = Some(certs.server.1.clone());
        assert_eq!(err("mqtts://h", &mismatched, None).key, "mqtt.key_file");

        let mut alpn = settings(&certs, true);
        alpn.alpn = Some("x y".into());
        assert_eq!(err("mqtts://h", &alpn, None).key, "mqtt.alpn");

        let e = err("mqtts://h:0", &TlsSettings::default(), None);
        assert_eq!(e.key, "mqtt.url");
    }
}
