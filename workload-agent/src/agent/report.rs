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
