//! HTTPS on the proxy listener from a certificate and key file (`server.tls_cert`,
//! `server.tls_key`), as a Kubernetes Secret mounts them, with renewal picked up without a
//! restart: the files are looked at again at most once a second, at a handshake, and a changed
//! pair replaces the one served. A pair that can't be read (a renewal half-written) is logged
//! and the previous one kept.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

/// The certificate served, reloaded when its files change.
pub struct ReloadingCert {
    cert_path: String,
    key_path: String,
    current: RwLock<Loaded>,
    /// When the files were last looked at (milliseconds since the epoch).
    checked_at: AtomicI64,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    stamp: Option<(SystemTime, SystemTime)>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Reads the pair now: a pair that can't be served stops the start.
    pub fn new(cert_path: &str, key_path: &str) -> Result<Self, String> {
        pingora::tls::install_default_crypto_provider();
        let key = load(cert_path, key_path)?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(Loaded {
                key,
                stamp: stamp(cert_path, key_path),
            }),
            checked_at: AtomicI64::new(now_ms()),
        })
    }

    fn reload_if_changed(&self) {
        let now = now_ms();
        let last = self.checked_at.load(Ordering::Relaxed);
        if now - last < 1000
            || self
                .checked_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let stamp = stamp(&self.cert_path, &self.key_path);
        let unchanged = self.current.read().map_or(true, |c| c.stamp == stamp);
        if unchanged {
            return;
        }
        match load(&self.cert_path, &self.key_path) {
            Ok(key) => {
                if let Ok(mut current) = self.current.write() {
                    *current = Loaded { key, stamp };
                    tracing::info!(cert = %self.cert_path, "TLS certificate reloaded");
                }
            }
            Err(e) => {
                tracing::warn!(cert = %self.cert_path, error = %e, "TLS certificate changed but can't be read; still serving the previous one");
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.reload_if_changed();
        self.current.read().ok().map(|c| c.key.clone())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The files' modification times: a Secret's update swaps them (a symlink flip), which changes
/// what the paths resolve to.
fn stamp(cert: &str, key: &str) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &str| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(cert)?, m(key)?))
}

fn load(cert: &str, key: &str) -> Result<Arc<CertifiedKey>, String> {
    let (certs, key_der) = pingora::tls::load_certs_and_key_files(cert, key)
        .map_err(|e| format!("{cert} / {key}: {e}"))?
        .ok_or_else(|| format!("{cert} / {key}: no certificate, or no private key"))?;
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| "no TLS crypto provider installed".to_owned())?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("{key}: {e}"))?;
    let pair = CertifiedKey::new(certs, signing);
    // A certificate and key written one after the other can meet half-renewed: a key that
    // isn't the certificate's is refused here, and the previous pair kept.
    pair.keys_match()
        .map_err(|e| format!("{cert} / {key}: the key is not the certificate's ({e})"))?;
    Ok(Arc::new(pair))
}
