//! Throwaway certificates for TLS tests: a CA, a server certificate for 127.0.0.1, client
//! certificates (good, expired, signed by another CA), written as PEM files in a temp dir.
//!
//! Generated with `rcgen` (pure Rust, aws-lc-rs), so no test needs the `openssl` program
//! and nothing links OpenSSL. Every certificate is made fresh per [`Pki`], so no key ever
//! lives in the repository.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};

/// A certificate and its key as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
}

/// A CA with a server certificate and client certificates, in a temp dir removed on drop.
#[derive(Debug)]
pub struct Pki {
    /// The CA certificate (PEM) the server and the good clients chain to.
    pub ca: PathBuf,
    /// The server certificate: SAN 127.0.0.1 and localhost, EKU server + client auth (etcd
    /// members use it for their peers too).
    pub server: CertFiles,
    /// A client certificate with CN `testbed-client` (with auth on, etcd takes the CN as the
    /// user of a request that carries no token; no user has that name).
    pub client: CertFiles,
    /// A client certificate whose validity ended in 2021.
    pub expired_client: CertFiles,
    /// A client certificate signed by another CA, unknown to the server.
    pub unknown_client: CertFiles,
    /// Another CA, which signed neither the server nor the good clients.
    pub other_ca: PathBuf,
    dir: tempfile::TempDir,
}

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2100, 1, 1);
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("self-signed CA");
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// What a leaf certificate is for.
#[derive(Clone, Copy)]
enum Leaf {
    Server,
    Client,
}

fn leaf(dir: &Path, file: &str, ca: &Ca, cn: &str, kind: Leaf, validity: (i32, i32)) -> CertFiles {
    let names = match kind {
        Leaf::Server => vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
        Leaf::Client => Vec::new(),
    };
    let mut params = CertificateParams::new(names).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = match kind {
        Leaf::Server => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Leaf::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.not_before = date_time_ymd(validity.0, 1, 1);
    params.not_after = date_time_ymd(validity.1, 1, 1);
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, &ca.issuer).expect("sign leaf");
    let files = CertFiles {
        cert: dir.join(format!("{file}.pem")),
        key: dir.join(format!("{file}-key.pem")),
    };
    std::fs::write(&files.cert, cert.pem()).expect("write certificate");
    std::fs::write(&files.key, key.serialize_pem()).expect("write key");
    files
}

impl Pki {
    /// Generates everything (a few milliseconds).
    #[must_use]
    pub fn generate() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("testbed-pki")
            .tempdir()
            .expect("temp dir");
        let ca = new_ca("testbed CA");
        let other = new_ca("some other CA");
        let d = dir.path();
        let server = leaf(d, "server", &ca, "etcd member", Leaf::Server, (2020, 2100));
        let client = leaf(d, "client", &ca, "testbed-client", Leaf::Client, (2020, 2100));
        let expired_client = leaf(d, "expired-client", &ca, "testbed-client", Leaf::Client, (2020, 2021));
        let unknown_client = leaf(
            d,
            "unknown-client",
            &other,
            "testbed-client",
            Leaf::Client,
            (2020, 2100),
        );
        let ca_path = d.join("ca.pem");
        std::fs::write(&ca_path, &ca.pem).expect("write CA");
        let other_ca = d.join("other-ca.pem");
        std::fs::write(&other_ca, &other.pem).expect("write other CA");
        Pki {
            ca: ca_path,
            server,
            client,
            expired_client,
            unknown_client,
            other_ca,
            dir,
        }
    }

    /// The directory holding the files.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The flags of a client with the good certificate:
    /// `--etcd-cacert CA --etcd-cert CERT <key_flag> KEY`.
    ///
    /// `key_flag` is `--etcd-key` for announcer and lb-sync, `--etcd-client-key` for dbhelper.
    #[must_use]
    pub fn client_args(&self, key_flag: &str) -> Vec<String> {
        vec![
            "--etcd-cacert".into(),
            self.ca.display().to_string(),
            "--etcd-cert".into(),
            self.client.cert.display().to_string(),
            key_flag.into(),
            self.client.key.display().to_string(),
        ]
    }

    /// etcd-client TLS options with the good client certificate.
    #[must_use]
    pub fn client_tls(&self) -> etcd_client::TlsOptions {
        let read = |p: &Path| std::fs::read(p).expect("read PEM");
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca)))
            .identity(etcd_client::Identity::from_pem(
                read(&self.client.cert),
                read(&self.client.key),
            ))
    }
}
