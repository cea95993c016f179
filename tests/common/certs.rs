//! Test certificates, made by Debian's `openssl`: EC P-256 keys, valid for two days.

use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `openssl args` in `dir`; a failure fails the test.
pub fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl must be installed")
        .success();
    assert!(ok, "openssl {args:?}");
}

/// A test CA in `dir`: `{name}.crt`, `{name}.key`.
pub fn make_ca(dir: &Path, name: &str) {
    let subject = format!("/CN=test CA {name}");
    let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &subject,
            "-keyout",
            &key,
            "-out",
            &crt,
        ],
    );
}

/// A certificate for localhost, 127.0.0.1 and ::1 with the subject `CN={cn}`, signed by the CA
/// `ca` of [`make_ca`], written with its key to `cert` and `key` in `dir`.
pub fn make_cert(dir: &Path, ca: &str, cert: &str, key: &str, cn: &str) {
    let subject = format!("/CN={cn}");
    let (csr, ext) = (format!("{cert}.csr"), format!("{cert}.ext"));
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &subject,
            "-keyout",
            key,
            "-out",
            &csr,
        ],
    );
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=critical,CA:FALSE\n",
    )
    .unwrap();
    let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            cert,
        ],
    );
}
