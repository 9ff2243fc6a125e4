//! What a failed connection means for the operator: rumqttc's error with, where the cause is
//! known, what to change (a missing client certificate, an unknown CA, a refused ALPN...).

use rumqttc::{ConnectReturnCode, ConnectionError};

/// The error, followed by what to do when the cause is recognised.
pub fn explain(error: &ConnectionError) -> String {
    match hint(error) {
        Some(h) => format!("{error} ({h})"),
        None => error.to_string(),
    }
}

/// What to do about `error`, when its cause is recognised.
pub fn hint(error: &ConnectionError) -> Option<&'static str> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    if let ConnectionError::ConnectionRefused(code) = error {
        return match code {
            ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadClientId => Some(
                "the broker refused this client: check its policy lets this certificate connect as mqtt.client_id",
            ),
            ConnectReturnCode::BadUserNamePassword => {
                Some("the broker wants credentials this client does not send: use a client certificate")
            }
            _ => None,
        };
    }
    let rustls_error = rustls_error(error)?;
    Some(match rustls_error {
        E::AlertReceived(A::CertificateRequired) | E::AlertReceived(A::HandshakeFailure) => {
            "the broker wants a client certificate: set mqtt.cert_file and mqtt.key_file, or the credentials mqtt-cert and mqtt-key"
        }
        E::AlertReceived(A::BadCertificate | A::UnknownCA | A::CertificateUnknown | A::DecryptError) => {
            "the broker refused this client certificate: check it is signed by a CA the broker trusts (AWS IoT Core: registered and active)"
        }
        E::AlertReceived(A::CertificateExpired) => "the client certificate has expired: renew it",
        E::AlertReceived(A::NoApplicationProtocol) | E::NoApplicationProtocol => {
            "the broker refused the ALPN protocol: check mqtt.alpn (AWS IoT Core on port 443: x-amzn-mqtt-ca)"
        }
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "the broker's certificate does not chain to the CA: check mqtt.ca_file"
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "the broker's certificate is not for this host: check the host in mqtt.url"
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the broker's certificate has expired, or this machine's clock is wrong"
        }
        _ => return None,
    })
}

/// The rustls error behind `error`, if any: rumqttc wraps it directly during the handshake, and
/// in an `io::Error` (itself inside its state or codec errors) when TLS 1.3 reports it after the
/// handshake, as when a server refuses the client's certificate.
fn rustls_error(error: &ConnectionError) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        // an io::Error's `source` skips the error it wraps
        if let Some(r) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use rumqttc::StateError;
    use rustls::{AlertDescription, CertificateError, Error as TlsError};

    use super::*;

    /// A rustls error as rumqttc reports it after a TLS 1.3 handshake: inside an `io::Error`
    /// inside its codec error inside its state error.
    fn after_handshake(e: TlsError) -> ConnectionError {
        let io = std::io::Error::other(e);
        ConnectionError::MqttState(StateError::Deserialization(rumqttc::Error::Io(io)))
    }

    #[test]
    fn known_failures_say_what_to_change() {
        let cases = [
            (
                after_handshake(TlsError::AlertReceived(
                    AlertDescription::CertificateRequired,
                )),
                "set mqtt.cert_file and mqtt.key_file",
            ),
            (
                ConnectionError::Tls(rumqttc::TlsError::TLS(TlsError::InvalidCertificate(
                    CertificateError::UnknownIssuer,
                ))),
                "check mqtt.ca_file",
            ),
            (
                after_handshake(TlsError::AlertReceived(
                    AlertDescription::NoApplicationProtocol,
                )),
                "check mqtt.alpn",
            ),
            (
                ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized),
                "mqtt.client_id",
            ),
        ];
        for (error, says) in cases {
            let text = explain(&error);
            assert!(text.contains(says), "{text}");
            assert!(text.starts_with(&error.to_string()), "{text}");
        }
        let other = ConnectionError::NetworkTimeout;
        assert_eq!(explain(&other), other.to_string());
    }
}
