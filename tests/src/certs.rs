//! A throwaway certificate authority for TLS tests: a CA, and certificates
//! it signs for 127.0.0.1 (servers) or for a named client.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A certificate and its private key, PEM encoded.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new() -> anyhow::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "arbiter test CA");
        Ok(TestCa {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    /// The CA certificate (what clients and servers trust).
    pub fn cert(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self) -> anyhow::Result<Pem> {
        self.sign(vec!["127.0.0.1".into(), "localhost".into()], "server")
    }

    /// A client certificate.
    pub fn client(&self, name: &str) -> anyhow::Result<Pem> {
        self.sign(vec![format!("{name}.clients.test")], name)
    }

    fn sign(&self, names: Vec<String>, common_name: &str) -> anyhow::Result<Pem> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}
