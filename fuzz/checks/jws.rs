//! Fuzz check `jws`: the ACME JWS envelope as a request body reaches it (RFC 8555 section 6.2):
//! `ParsedJws::parse`, the jwk/kid rule, key validation, thumbprints, signature verification and
//! external account binding. Shared by `fuzz/fuzz_targets/jws.rs` and
//! `issuer-api/tests/fuzz_regressions.rs`.
#![allow(dead_code)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use issuer_api::acme::jws::{FlattenedJws, Jwk, JwsError, ParsedJws, verify_eab};
use ring::signature::{Ed25519KeyPair, KeyPair};

const NEW_ACCOUNT_URL: &str = "https://ca.example/acme/new-account";
const EAB_KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn signer() -> &'static Ed25519KeyPair {
    static KEY: std::sync::OnceLock<Ed25519KeyPair> = std::sync::OnceLock::new();
    KEY.get_or_init(|| Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).expect("fixed Ed25519 seed"))
}

fn jwk_of(kp: &Ed25519KeyPair) -> Jwk {
    Jwk::Okp { crv: "Ed25519".into(), x: B64.encode(kp.public_key().as_ref()) }
}

/// Byte 0 picks the mode: a raw body, a header/payload the harness signs correctly, or an EAB.
pub(crate) fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => check_body(rest),
        1 => check_signed(rest),
        _ => check_eab(rest),
    }
}

fn check_key(k: &Jwk) {
    let _outcome = k.validate(); // only that it returns (no panic) matters
    assert_eq!(k.thumbprint().len(), 43, "a SHA-256 thumbprint is 43 base64url characters");
    let json = serde_json::to_string(k).expect("a JWK serializes");
    let back: Jwk = serde_json::from_str(&json).expect("a serialized JWK parses");
    assert_eq!(&back, k, "JWK round trip");
    assert_eq!(back.thumbprint(), k.thumbprint());
}

fn check_body(body: &[u8]) {
    let Ok(jws) = ParsedJws::parse(body) else { return };
    let (jwk, kid) = (jws.require_jwk(), jws.require_kid());
    assert!(!(jwk.is_ok() && kid.is_ok()), "jwk and kid are exclusive");
    if let Ok(k) = jwk {
        check_key(k);
        if jws.verify(k).is_ok() {
            assert!(k.validate().is_ok(), "a key that verified a signature must validate");
        }
    }
    let _outcome = jws.verify(&jwk_of(signer())); // only that it returns (no panic) matters
}

/// The fuzzer's bytes are the protected header (a JSON object, `alg`/`jwk`/`kid` forced) and the
/// payload; the harness signs them, so every parse must verify.
fn check_signed(data: &[u8]) {
    let (header, payload) = match data.iter().position(|b| *b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let mut header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).unwrap_or_default();
    let kp = signer();
    let key = jwk_of(kp);
    header.insert("alg".into(), "EdDSA".into());
    header.insert("jwk".into(), serde_json::to_value(&key).expect("jwk json"));
    header.remove("kid");
    header.entry("url").or_insert_with(|| NEW_ACCOUNT_URL.into());
    let protected = B64.encode(serde_json::to_vec(&header).expect("header json"));
    let payload64 = B64.encode(payload);
    let sig = kp.sign(format!("{protected}.{payload64}").as_bytes()).as_ref().to_vec();
    let body = serde_json::json!({"protected": protected, "payload": payload64, "signature": B64.encode(&sig)});
    let body = serde_json::to_vec(&body).expect("body json");
    let jws = match ParsedJws::parse(&body) {
        Ok(j) => j,
        // The fuzzer's `url`, `nonce` may have the wrong JSON type.
        Err(e) => return assert!(matches!(e, JwsError::Malformed(_)), "{e}"),
    };
    assert_eq!(jws.payload, payload);
    let k = jws.require_jwk().expect("the harness set jwk and removed kid");
    assert_eq!(k, &key);
    jws.verify(k).expect("a correctly signed JWS verifies");
    // Any change of the signature must fail.
    let mut v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let mut sig = sig;
    sig[0] ^= 1;
    v["signature"] = B64.encode(&sig).into();
    let tampered = ParsedJws::parse(&serde_json::to_vec(&v).expect("json")).expect("still parses");
    assert_eq!(tampered.verify(k), Err(JwsError::BadSignature));
}

fn check_eab(data: &[u8]) {
    let Ok(eab) = serde_json::from_slice::<FlattenedJws>(data) else { return };
    let account = jwk_of(signer());
    let lookup = |kid: &str| (kid == "kid-1").then(|| EAB_KEY.to_vec());
    if let Ok(kid) = verify_eab(&eab, &account, NEW_ACCOUNT_URL, lookup) {
        assert_eq!(kid, "kid-1");
    }
}

/// Realistic inputs: signed newAccount / POST-as-GET bodies, the harness modes, an EAB.
pub(crate) fn seeds() -> Vec<Vec<u8>> {
    let kp = signer();
    let key = jwk_of(kp);
    let sign = |header: serde_json::Value, payload: &[u8]| {
        let protected = B64.encode(header.to_string());
        let payload = B64.encode(payload);
        let sig = kp.sign(format!("{protected}.{payload}").as_bytes());
        let body = serde_json::json!({"protected": protected, "payload": payload, "signature": B64.encode(sig)});
        serde_json::to_vec(&body).expect("json")
    };
    let with_mode = |m: u8, b: Vec<u8>| [vec![m], b].concat();
    let new_account = sign(
        serde_json::json!({"alg": "EdDSA", "jwk": key, "nonce": "n1", "url": NEW_ACCOUNT_URL}),
        br#"{"termsOfServiceAgreed":true,"contact":["mailto:ops@example.org"]}"#,
    );
    let get =
        sign(serde_json::json!({"alg": "EdDSA", "kid": "https://ca/acme/account/1", "nonce": "n", "url": "u"}), b"");
    let es256 = br#"{"protected":"eyJhbGciOiJFUzI1NiIsImp3ayI6eyJrdHkiOiJFQyIsImNydiI6IlAtMjU2IiwieCI6ImY4M09KM0QyeEY0b1Jxdk9KdlpKa0JEX0F0R0FCLXRudFlmblVCNlBqRVkiLCJ5IjoieDNKZ0cwbnhoQ2xfUWdPQ1ZhN0dBdjR4SGx1ZzJ1YnZQcmJLbE9FQmJFRSJ9LCJub25jZSI6Im4iLCJ1cmwiOiJ1In0","payload":"","signature":"AAAA"}"#.to_vec();
    let rsa = serde_json::to_vec(&serde_json::json!({
        "protected": B64.encode(serde_json::json!({"alg": "RS256", "jwk": {"kty": "RSA", "n": B64.encode([0xc5u8; 256]), "e": "AQAB"}, "url": "u"}).to_string()),
        "payload": "", "signature": B64.encode([1u8; 256])})).expect("json");
    let eab_protected =
        B64.encode(serde_json::json!({"alg": "HS256", "kid": "kid-1", "url": NEW_ACCOUNT_URL}).to_string());
    let eab_payload = B64.encode(serde_json::to_vec(&key).expect("json"));
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, EAB_KEY),
        format!("{eab_protected}.{eab_payload}").as_bytes(),
    );
    let eab = serde_json::to_vec(
        &serde_json::json!({"protected": eab_protected, "payload": eab_payload, "signature": B64.encode(tag.as_ref())}),
    )
    .expect("json");
    vec![
        with_mode(0, new_account),
        with_mode(0, get),
        with_mode(0, es256),
        with_mode(0, rsa),
        with_mode(
            1,
            [
                br#"{"nonce":"abc","url":"https://ca.example/acme/new-order"}"#.to_vec(),
                vec![0xff],
                br#"{"identifiers":[{"type":"dns","value":"a.example"}]}"#.to_vec(),
            ]
            .concat(),
        ),
        with_mode(2, eab),
    ]
}
