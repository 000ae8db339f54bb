//! The one rustls crypto provider of the workspace.
//!
//! Every crate that speaks TLS (etcd-client, reqwest, mysql_async) is built against
//! aws-lc-rs. Installing it as the process default once, at the top of `main`, keeps
//! rustls from panicking with "could not automatically determine the process-level
//! CryptoProvider" should a second provider ever sneak into the dependency graph.

/// Installs aws-lc-rs as the process-wide rustls provider. Calling it twice is harmless.
pub fn install_crypto_provider() {
    // `Err` only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    #[test]
    fn install_twice_is_harmless() {
        super::install_crypto_provider();
        super::install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
