//! The trust report an agent sends with every renewal and notices poll (header
//! `Lanyard-Trust-Report`): the bundle sequence it has installed, the issuer of the certificate it
//! serves, the handshakes its seam verifiers accepted and refused since its previous report, and
//! how long its last renewal took. The CA gates rotation steps on these (`ca::fleet`).
//!
//! Counts are handed out at most once: a request takes the counts not yet reported, and gives
//! them back if the CA did not take the report (no answer, or refused before reading it), so
//! concurrent requests never report the same handshake twice and a lost request loses none.

use std::sync::Mutex;
use std::time::Duration;

use crate::credentials::{Svid, TrustBundle};
use crate::tls::{CredentialSeam, HandshakeCounts, Refusal};

/// Request header carrying the report.
pub const HEADER: &str = "lanyard-trust-report";

/// Builds the agent's reports from its seam.
#[derive(Debug)]
pub struct TrustReporter {
    seam: CredentialSeam,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Totals already handed to a report (in flight or delivered).
    reported: HandshakeCounts,
    /// The last renewal's latency, until a report carried it.
    fetch: Option<Duration>,
}

/// One report on its way: the header value and what it took, to give back if it is lost.
#[derive(Debug)]
pub struct Outgoing {
    /// The header value (JSON).
    pub value: String,
    counts: HandshakeCounts,
    fetch: Option<Duration>,
}

impl TrustReporter {
    /// A reporter over `seam`'s handshake counts.
    pub fn new(seam: CredentialSeam) -> Self {
        TrustReporter { seam, state: Mutex::new(State::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers how long a renewal took, for the next report.
    pub fn fetched(&self, took: Duration) {
        self.state().fetch = Some(took);
    }

    /// Takes the counts not yet reported into a report about `current` and `bundle`.
    pub fn take(&self, current: &Svid, bundle: &TrustBundle) -> Outgoing {
        let totals = self.seam.handshake_counts();
        let mut st = self.state();
        let counts = totals.since(&st.reported);
        st.reported = st.reported.plus(&counts);
        let fetch = st.fetch.take();
        drop(st);
        let mut refused = serde_json::Map::new();
        for why in Refusal::ALL {
            let n = counts.refused_for(why);
            if n > 0 {
                refused.insert(why.label().to_owned(), n.into());
            }
        }
        let mut v = serde_json::json!({
            "bundle_sequence": bundle.sequence,
            "accepted": counts.accepted,
            "refused": refused,
        });
        if let Some(issuer) = current.chain.get(1) {
            v["serving_issuer"] = hex::encode(ring::digest::digest(&ring::digest::SHA256, issuer.as_ref())).into();
        }
        if let Some(f) = fetch {
            v["fetch_ms"] = u64::try_from(f.as_millis()).unwrap_or(u64::MAX).into();
        }
        Outgoing { value: v.to_string(), counts, fetch }
    }

    /// Gives back what a report that did not reach the CA took.
    pub fn lost(&self, report: Outgoing) {
        let mut st = self.state();
        st.reported = st.reported.since(&report.counts);
        if st.fetch.is_none() {
            st.fetch = report.fetch;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(r: &TrustReporter) -> (Outgoing, serde_json::Value) {
        let svid = Svid {
            spiffe_id: "spiffe://example.org/a".into(),
            chain: vec![vec![1u8].into(), vec![2u8, 3].into()],
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(vec![0u8].into()),
            not_after: 0,
            not_before: 0,
        };
        let bundle = TrustBundle { trust_domain: "example.org".into(), roots: Vec::new(), sequence: 7 };
        let out = r.take(&svid, &bundle);
        let v: serde_json::Value = serde_json::from_str(&out.value).expect("json");
        (out, v)
    }

    #[test]
    fn counts_are_reported_once_and_given_back_when_lost() {
        let seam = CredentialSeam::new("spiffe://example.org/a").expect("seam");
        let r = TrustReporter::new(seam.clone());
        for _ in 0..3 {
            seam.tally().accepted();
        }
        seam.tally().refused(Refusal::UnknownIssuer);
        r.fetched(Duration::from_millis(40));
        let (first, v) = report(&r);
        assert_eq!(v["accepted"], 3);
        assert_eq!(v["refused"]["unknown_issuer"], 1);
        assert_eq!(v["fetch_ms"], 40);
        assert_eq!(v["bundle_sequence"], 7);
        assert_eq!(v["serving_issuer"].as_str().map(str::len), Some(64));
        // A concurrent request while the first is in flight reports only what is new.
        seam.tally().accepted();
        let (second, v) = report(&r);
        assert_eq!(v["accepted"], 1);
        assert!(v.get("fetch_ms").is_none());
        // The first never reached the CA: its counts (and the latency) come back, once.
        r.lost(first);
        let (_, v) = report(&r);
        assert_eq!(v["accepted"], 3);
        assert_eq!(v["refused"]["unknown_issuer"], 1);
        assert_eq!(v["fetch_ms"], 40);
        let (_, v) = report(&r);
        assert_eq!(v["accepted"], 0);
        drop(second);
    }
}
