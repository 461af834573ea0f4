//! A deliberately small ACME client for tests that must send requests no real client would:
//! stale nonces, wrong URLs, replays, refused algorithms. Real clients (lego, uacme) cover the
//! happy paths.

use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

use crate::{Response, https_request};

/// An ACME account key and the server it talks to.
#[derive(Debug)]
pub struct RawClient {
    /// Server address.
    pub addr: SocketAddr,
    /// Root to verify the server with.
    pub root_pem: String,
    /// Base URL (`https://localhost:<port>`).
    pub base: String,
    key: EcdsaKeyPair,
    /// Account URL once registered.
    pub kid: Option<String>,
}

impl RawClient {
    /// A client with a fresh P-256 account key.
    pub fn new(addr: SocketAddr, root_pem: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("key");
        RawClient {
            addr,
            root_pem: root_pem.to_owned(),
            base: format!("https://localhost:{}", addr.port()),
            key,
            kid: None,
        }
    }

    /// Talks to `addr` but signs URLs of `base` (replicas behind one public URL).
    pub fn with_base(mut self, base: &str) -> Self {
        self.base = base.trim_end_matches('/').to_owned();
        self
    }

    /// The account key as a JWK.
    pub fn jwk(&self) -> Value {
        let pk = self.key.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "x": B64.encode(&pk[1..33]), "y": B64.encode(&pk[33..65])})
    }

    /// Absolute URL of an ACME path.
    pub fn url(&self, path: &str) -> String {
        format!("{}/acme{path}", self.base)
    }

    /// A fresh nonce from newNonce.
    pub async fn nonce(&self) -> String {
        let r = https_request(self.addr, "localhost", "HEAD", "/acme/new-nonce", None, Some(&self.root_pem))
            .await
            .expect("nonce");
        r.header("replay-nonce").expect("replay-nonce").to_owned()
    }

    /// Signs `payload` (None = POST-as-GET) for `url` with the given protected header fields.
    pub fn sign(&self, protected: Value, payload: Option<&Value>) -> Vec<u8> {
        let protected = B64.encode(protected.to_string());
        let payload = payload.map(|p| B64.encode(p.to_string())).unwrap_or_default();
        let sig = self.key.sign(&SystemRandom::new(), format!("{protected}.{payload}").as_bytes()).expect("sign");
        serde_json::to_vec(&json!({"protected": protected, "payload": payload, "signature": B64.encode(sig)}))
            .expect("json")
    }

    /// The standard protected header: kid once registered, else jwk.
    pub fn header(&self, url: &str, nonce: &str) -> Value {
        match &self.kid {
            Some(kid) => json!({"alg": "ES256", "kid": kid, "nonce": nonce, "url": url}),
            None => json!({"alg": "ES256", "jwk": self.jwk(), "nonce": nonce, "url": url}),
        }
    }

    /// Sends a signed body to an ACME path.
    pub async fn send(&self, path: &str, body: Vec<u8>) -> Response {
        https_request(
            self.addr,
            "localhost",
            "POST",
            &format!("/acme{path}"),
            Some(("application/jose+json", body)),
            Some(&self.root_pem),
        )
        .await
        .expect("request")
    }

    /// A correct POST: fresh nonce, right URL.
    pub async fn post(&self, path: &str, payload: Option<&Value>) -> Response {
        let nonce = self.nonce().await;
        let body = self.sign(self.header(&self.url(path), &nonce), payload);
        self.send(path, body).await
    }

    /// Registers the account; remembers its URL.
    pub async fn register(&mut self) -> Response {
        let nonce = self.nonce().await;
        let hdr = json!({"alg": "ES256", "jwk": self.jwk(), "nonce": nonce, "url": self.url("/new-account")});
        let payload = json!({"termsOfServiceAgreed": true, "contact": ["mailto:t@example.test"]});
        let r = self.send("/new-account", self.sign(hdr, Some(&payload))).await;
        assert!(r.status == 201 || r.status == 200, "newAccount: {} {}", r.status, String::from_utf8_lossy(&r.body));
        self.kid = r.header("location").map(str::to_owned);
        r
    }

    /// Path of the `kind` challenge of the authorization at the absolute URL `authz_url`.
    pub async fn challenge_path(&self, authz_url: &str, kind: &str) -> String {
        let authz = self.post(&self.path_of(authz_url), None).await.json();
        let ch = authz["challenges"]
            .as_array()
            .expect("challenges")
            .iter()
            .find(|c| c["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} challenge in {authz}"))
            .clone();
        self.path_of(ch["url"].as_str().expect("challenge url"))
    }

    /// Path part of an absolute URL of this server.
    pub fn path_of(&self, url: &str) -> String {
        url.strip_prefix(&format!("{}/acme", self.base)).expect("our URL").to_owned()
    }
}

/// A certificate downloaded over ACME: the default chain and the alternates the server offered
/// with `Link: rel="alternate"` (RFC 8555 section 7.4.2), each as PEM text.
#[derive(Debug)]
pub struct Downloaded {
    /// The default chain (leaf first).
    pub default_chain: String,
    /// Every alternate chain, in the order the server linked them.
    pub alternates: Vec<String>,
}

impl RawClient {
    /// Enrolls the SPIFFE ID `id` with a join token (`join-token-01`), finalizes with a fresh key
    /// and downloads the certificate with every alternate chain. Registers first if needed.
    pub async fn enroll_with_token(&mut self, id: &str, token: &str) -> Downloaded {
        if self.kid.is_none() {
            self.register().await;
        }
        let r = self.post("/new-order", Some(&json!({"identifiers": [{"type": "spiffe", "value": id}]}))).await;
        assert_eq!(r.status, 201, "newOrder: {}", String::from_utf8_lossy(&r.body));
        let order = r.json();
        let ch = self.challenge_path(order["authorizations"][0].as_str().expect("authz"), "join-token-01").await;
        let r = self.post(&ch, Some(&json!({"token": token}))).await;
        assert_eq!(r.json()["status"], "valid", "challenge: {}", String::from_utf8_lossy(&r.body));
        let (_, csr) = workload_agent::agent::enroll::new_key_and_csr(id).expect("csr");
        let r = self
            .post(&self.path_of(order["finalize"].as_str().expect("f")), Some(&json!({"csr": B64.encode(csr)})))
            .await;
        assert_eq!(r.status, 200, "finalize: {}", String::from_utf8_lossy(&r.body));
        let cert_url = r.json()["certificate"].as_str().expect("certificate").to_owned();
        let r = self.post(&self.path_of(&cert_url), None).await;
        assert_eq!(r.status, 200, "download: {}", String::from_utf8_lossy(&r.body));
        let mut alternates = Vec::new();
        for (_, v) in r.headers.iter().filter(|(n, v)| n == "link" && v.contains("rel=\"alternate\"")) {
            let url = v.trim_start_matches('<').split('>').next().expect("url");
            let alt = self.post(&self.path_of(url), None).await;
            assert_eq!(alt.status, 200, "alternate download: {}", String::from_utf8_lossy(&alt.body));
            alternates.push(String::from_utf8_lossy(&alt.body).to_string());
        }
        Downloaded { default_chain: String::from_utf8_lossy(&r.body).to_string(), alternates }
    }
}
