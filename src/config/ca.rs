//! `upstream.ca_file`: the CAs an `https://` upstream's certificate must chain to, instead of
//! the system's. Read once, at start and by `check-config`, into the shape Pingora's peers take
//! (`HttpPeer::options.ca`), so a request costs one `Arc` clone. Every certificate of the file
//! is kept (Pingora's own PEM loader keeps only the first): a bundle of an old and a new CA,
//! during a rotation, works.

use std::fmt;
use std::sync::Arc;

use pingora::protocols::tls::CaType;
use pingora::tls::{CertificateDer, RootCertStore};
use pingora::utils::tls::WrappedX509;
use rustls_pki_types::pem::{self, PemObject, SectionKind};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The CAs of `upstream.ca_file`.
#[derive(Clone)]
pub struct UpstreamCa {
    /// The file they were read from.
    pub path: String,
    /// Every certificate of it, in file order.
    pub certs: Arc<CaType>,
}

impl fmt::Debug for UpstreamCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamCa")
            .field("path", &self.path)
            .field("certificates", &self.certs.len())
            .finish()
    }
}

impl UpstreamCa {
    /// Every certificate of the PEM file at `path` (`upstream.ca_file`); the error names the
    /// key and the path.
    pub fn load(path: &str) -> Result<Self, String> {
        Self::load_for("upstream.ca_file", path)
    }

    /// The same for the config key `key` (`store.ca_file` reads its file this way too).
    pub fn load_for(key: &str, path: &str) -> Result<Self, String> {
        let problem = |why: String| format!("{key} = {path:?}: {why}");
        let bytes = std::fs::read(path).map_err(|e| problem(format!("can't read it: {e}")))?;
        let mut ders = Vec::new();
        let mut others = Vec::new();
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes) {
            match section.map_err(|e| problem(format!("not PEM: {}", pem_error(&e))))? {
                (SectionKind::Certificate, der) => ders.push(der),
                (kind, _) => others.push(kind),
            }
        }
        if ders.is_empty() {
            let why = if others.is_empty() && !contains(&bytes, b"-----BEGIN ") {
                "not PEM: no -----BEGIN CERTIFICATE----- block in it (a DER file converts with \
                 `openssl x509 -inform der`)"
                    .to_owned()
            } else if others.is_empty() {
                "no certificate in it (no -----BEGIN CERTIFICATE----- block)".to_owned()
            } else {
                format!("no certificate in it, only {others:?}")
            };
            return Err(problem(why));
        }
        let mut roots = RootCertStore::empty();
        let mut certs = Vec::with_capacity(ders.len());
        for (i, der) in ders.into_iter().enumerate() {
            let n = i + 1;
            // Pingora adds each to a root store at every new connection: a certificate it
            // can't take is found here rather than as a 502 on every request.
            roots
                .add(CertificateDer::from(der.as_slice()))
                .map_err(|e| problem(format!("certificate {n} can't be a trust anchor: {e}")))?;
            // `WrappedX509::new` panics on what it can't parse; `try_new` says why instead.
            let cert = WrappedX509::try_new(der, |der| {
                X509Certificate::from_der(der).map(|(_, cert)| cert)
            })
            .map_err(|e| problem(format!("certificate {n} is not an X.509 certificate: {e}")))?;
            certs.push(cert);
        }
        Ok(Self {
            path: path.to_owned(),
            certs: Arc::from(certs),
        })
    }
}

fn pem_error(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a block has no -----END line".to_owned(),
        pem::Error::IllegalSectionStart { .. } => "a malformed -----BEGIN line".to_owned(),
        pem::Error::Base64Decode(_) => "a block is not valid base64".to_owned(),
        other => other.to_string(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two self-signed P-256 CAs, made once with openssl for these tests.
    const CA_ONE: &str = "-----BEGIN CERTIFICATE-----
MIIBjDCCATGgAwIBAgIUTO7TuqBI4VQzG1j0JtRHqY91j3gwCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQdW5pdCB0ZXN0IENBIG9uZTAeFw0yNjExMjMxODA3NTJaFw0z
NjExMjAxODA3NTJaMBsxGTAXBgNVBAMMEHVuaXQgdGVzdCBDQSBvbmUwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAASm5vU/CFAlnK+JDc12F3sCaVWRUXKYp/GdydcT
uaDMsdIMvG1gcNKeVurih2iVyFQ+M/EBaXYmw0oU9ObVT1Z2o1MwUTAdBgNVHQ4E
FgQUkSMAyTxjABFpk8O7Ll0zxmPgKTMwHwYDVR0jBBgwFoAUkSMAyTxjABFpk8O7
Ll0zxmPgKTMwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEAl6aW
xZyo0eep6RaUKjINNCZt2OhFUDwHCG4NQc1WXasCIQCyWi6ypcaApfdBGp06+lz2
i1QRYd4D/mqOYqB4N9QO7w==
-----END CERTIFICATE-----
";
    const CA_TWO: &str = "-----BEGIN CERTIFICATE-----
MIIBizCCATGgAwIBAgIUCU3OvrswP5sWm4fDN45yASiUC+8wCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQdW5pdCB0ZXN0IENBIHR3bzAeFw0yNjExMjMxODA3NTJaFw0z
NjExMjAxODA3NTJaMBsxGTAXBgNVBAMMEHVuaXQgdGVzdCBDQSB0d28wWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAATrmazK4cTG2NJvNcSI43Q7mVRg61TMevJXOcfV
Jji9heM5TQl8xAJ2jM0izqFAgAdJvX3AJAl6AHgtuzxnMWeno1MwUTAdBgNVHQ4E
FgQU9EJqxltYPPFsIZMLsIls6edWrHgwHwYDVR0jBBgwFoAU9EJqxltYPPFsIZML
sIls6edWrHgwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiAIEPHz
C4I1kPNx9djQ2gU0FigxvwDf2iUFy8P0foojgAIhAJiO0o/hCbG3Rn2H3HDFXqsZ
Y6pn97ohRC3q3jbCeUYw
-----END CERTIFICATE-----
";

    fn write(dir: &tempfile::TempDir, name: &str, text: &[u8]) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn every_certificate_of_a_bundle_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = format!("# old and new\n{CA_ONE}\n{CA_TWO}");
        let ca = UpstreamCa::load(&write(&dir, "bundle.pem", bundle.as_bytes())).unwrap();
        assert_eq!(ca.certs.len(), 2);
        let second = CertificateDer::from(&ca.certs[1]);
        let two = CertificateDer::pem_slice_iter(CA_TWO.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(second, two);
    }

    #[test]
    fn every_problem_names_the_key_and_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem").display().to_string();
        let key = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let odd = b"-----BEGIN SOMETHING-----\nAAAA\n-----END SOMETHING-----\n";
        let cut = &CA_ONE.as_bytes()[..200];
        let not_x509 = b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        for (path, why) in [
            (missing, "can't read it"),
            (write(&dir, "text.pem", b"hello\n"), "not PEM"),
            (
                write(&dir, "der.crt", &[0x30, 0x82, 0x01, 0x8c, 0x30]),
                "not PEM",
            ),
            (write(&dir, "key.pem", key), "no certificate in it"),
            (write(&dir, "odd.pem", odd), "no certificate in it"),
            (
                write(&dir, "cut.pem", cut),
                "not PEM: a block has no -----END",
            ),
            (write(&dir, "bad.pem", not_x509), "certificate 1 can't be"),
        ] {
            let e = UpstreamCa::load(&path).err().unwrap_or_default();
            assert!(
                e.starts_with(&format!("upstream.ca_file = {path:?}: ")) && e.contains(why),
                "{path}: {e}"
            );
        }
    }
}
