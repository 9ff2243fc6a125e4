//! Broker URLs, parsed with the `url` crate into host, port and whether the link is TLS: pure,
//! no I/O. The agent and the bridge accept exactly the same URLs.
//!
//! Accepted: `mqtt://` or `tcp://` (plain TCP, port 1883 by default) and `mqtts://` or `ssl://`
//! (TLS, port 8883 by default), then a host name, IPv4 address or bracketed IPv6 address, and
//! an optional port from 1 to 65535. A trailing `/` is allowed; a path, query, fragment or
//! credentials are refused (MQTT has no path, and credentials do not belong in a URL).

use std::fmt;

/// Port of `mqtt://` and `tcp://` URLs without one.
pub const PLAIN_PORT: u16 = 1883;
/// Port of `mqtts://` and `ssl://` URLs without one.
pub const TLS_PORT: u16 = 8883;

/// A broker's address, from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or IP address (an IPv6 address without its brackets).
    pub host: String,
    /// TCP port, never 0.
    pub port: u16,
    /// Whether the connection is TLS (`mqtts://`, `ssl://`).
    pub tls: bool,
}

/// Why a broker URL was refused; each says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerUrlError {
    /// Not a URL at all, or a port that is not a number.
    #[error("{url:?} is not a URL ({reason}): write it like \"mqtts://broker.example.com:8883\"")]
    Malformed {
        /// The URL as given.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// A scheme other than the four accepted.
    #[error("{url:?}: unknown scheme {scheme:?}: use mqtt:// or tcp:// (plain TCP), mqtts:// or ssl:// (TLS)")]
    Scheme {
        /// The URL as given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// No host.
    #[error("{url:?} has no host: write it like \"mqtt://broker:1883\"")]
    NoHost {
        /// The URL as given.
        url: String,
    },
    /// A host name with characters no DNS name has.
    #[error("{url:?}: {host:?} is not a host name: use letters, digits, '-' and '.', an IPv4 address or a bracketed IPv6 address")]
    BadHost {
        /// The URL as given.
        url: String,
        /// The host as parsed.
        host: String,
    },
    /// Port 0.
    #[error(
        "{url:?}: port 0 is not a port to connect to: use 1-65535, or leave it out for {default}"
    )]
    PortZero {
        /// The URL as given.
        url: String,
        /// The scheme's default port.
        default: u16,
    },
    /// `user:password@`.
    #[error("{url:?}: credentials do not belong in the URL: remove the user:password@ part (brokers that want one take a client certificate)")]
    Credentials {
        /// The URL as given.
        url: String,
    },
    /// A path, query or fragment.
    #[error("{url:?}: an MQTT broker URL has no path, query or fragment: write only \"scheme://host:port\"")]
    Path {
        /// The URL as given.
        url: String,
    },
}

impl BrokerUrl {
    /// Parses a broker URL (see the module's documentation for what is accepted).
    pub fn parse(text: &str) -> Result<BrokerUrl, BrokerUrlError> {
        let url = text.to_owned();
        let parsed = url::Url::parse(text).map_err(|e| match e {
            url::ParseError::EmptyHost => BrokerUrlError::NoHost { url: url.clone() },
            e => BrokerUrlError::Malformed {
                url: url.clone(),
                reason: e.to_string(),
            },
        })?;
        let (tls, default) = match parsed.scheme() {
            "mqtt" | "tcp" => (false, PLAIN_PORT),
            "mqtts" | "ssl" => (true, TLS_PORT),
            other => {
                return Err(BrokerUrlError::Scheme {
                    scheme: other.to_owned(),
                    url,
                })
            }
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(BrokerUrlError::Credentials { url });
        }
        if !matches!(parsed.path(), "" | "/")
            || parsed.query().is_some()
            || parsed.fragment().is_some()
        {
            return Err(BrokerUrlError::Path { url });
        }
        let host = match parsed.host() {
            None => return Err(BrokerUrlError::NoHost { url }),
            Some(url::Host::Domain("")) => return Err(BrokerUrlError::NoHost { url }),
            Some(url::Host::Domain(d)) => {
                // schemes unknown to the URL standard keep their host as written (percent
                // escapes and all), so check it is something DNS could resolve
                let ok = d
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
                if !ok {
                    return Err(BrokerUrlError::BadHost {
                        host: d.to_owned(),
                        url,
                    });
                }
                d.to_ascii_lowercase()
            }
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
        };
        let port = match parsed.port() {
            None => default,
            Some(0) => return Err(BrokerUrlError::PortZero { url, default }),
            Some(p) => p,
        };
        Ok(BrokerUrl { host, port, tls })
    }
}

impl fmt::Display for BrokerUrl {
    /// The canonical form: `mqtt://` or `mqtts://`, host (IPv6 in brackets), port.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// The URL table the agent's and the bridge's configuration tests both run through their
/// `[mqtt] url`, so both sides give the same answers.
#[cfg(any(test, feature = "test-support"))]
pub mod examples {
    /// URLs both sides accept: text, host, port, TLS.
    pub const GOOD: &[(&str, &str, u16, bool)] = &[
        ("mqtt://h", "h", 1883, false),
        ("mqtt://h:1884", "h", 1884, false),
        ("tcp://h", "h", 1883, false),
        ("mqtts://h", "h", 8883, true),
        ("ssl://h:443", "h", 443, true),
        (
            "MQTTS://Broker.Example.COM",
            "broker.example.com",
            8883,
            true,
        ),
        ("mqtt://h/", "h", 1883, false),
        ("mqtt://127.0.0.1:1999", "127.0.0.1", 1999, false),
        ("mqtt://[::1]:1900", "::1", 1900, false),
        ("mqtts://[::1]", "::1", 8883, true),
        (
            "mqtts://a1b2c3-ats.iot.eu-west-1.amazonaws.com:443",
            "a1b2c3-ats.iot.eu-west-1.amazonaws.com",
            443,
            true,
        ),
    ];

    /// URLs both sides refuse, with words their error must contain.
    pub const BAD: &[(&str, &str)] = &[
        ("http://h", "unknown scheme"),
        ("ws://h:80", "unknown scheme"),
        ("h:1883", "unknown scheme"),
        ("broker", "not a URL"),
        ("", "not a URL"),
        ("mqtt://", "no host"),
        ("mqtt://:1883", "no host"),
        ("mqtt://h:0", "port 0"),
        ("mqtts://h:0", "port 0"),
        ("mqtt://h:x", "not a URL"),
        ("mqtt://h:65536", "not a URL"),
        ("mqtt://u:p@h", "credentials"),
        ("mqtt://u@h", "credentials"),
        ("mqtt://h/x", "no path"),
        ("mqtts://h:8883/mqtt", "no path"),
        ("mqtt://h?x=1", "no path"),
        ("mqtt://h#x", "no path"),
        ("mqtt://h%20x", "not a host name"),
        ("mqtt://[::1", "not a URL"),
    ];

    /// Runs both tables through one side's `[mqtt] url`: `parse(url, tls)` reads a config with
    /// that URL (and, when `tls`, a CA file) into that side's broker endpoint, or its error,
    /// which must name `mqtt.url`.
    pub fn assert_same_answers<E: std::fmt::Display>(
        parse: impl Fn(&str, bool) -> Result<crate::Endpoint, E>,
    ) {
        for &(url, host, port, tls) in GOOD {
            let b = parse(url, tls).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(
                (b.host(), b.port(), b.tls().is_some()),
                (host, port, tls),
                "{url}"
            );
        }
        for &(url, says) in BAD {
            let err = match parse(url, false) {
                Ok(b) => panic!("{url} was accepted as {b}"),
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains("mqtt.url") && err.contains(says),
                "{url}: {err}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::examples::{BAD, GOOD};
    use super::*;

    #[test]
    fn good_urls_give_host_port_and_tls() {
        for &(text, host, port, tls) in GOOD {
            let got = BrokerUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                got,
                BrokerUrl {
                    host: host.into(),
                    port,
                    tls
                },
                "{text}"
            );
        }
    }

    #[test]
    fn bad_urls_are_refused_with_what_to_do() {
        for &(text, says) in BAD {
            let err = BrokerUrl::parse(text).expect_err(text).to_string();
            assert!(err.contains(says), "{text}: {err}");
            assert!(err.contains(':'), "{text}: {err}");
        }
    }

    #[test]
    fn display_is_the_canonical_url() {
        for (text, shown) in [
            ("tcp://h", "mqtt://h:1883"),
            ("ssl://h", "mqtts://h:8883"),
            ("mqtt://[::1]:1900/", "mqtt://[::1]:1900"),
        ] {
            let url = BrokerUrl::parse(text).expect(text);
            assert_eq!(url.to_string(), shown);
            assert_eq!(BrokerUrl::parse(shown).expect(shown), url);
        }
    }
}
