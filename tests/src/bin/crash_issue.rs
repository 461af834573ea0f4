//! Test helper: loads the CA from a database, issues one certificate and calls `abort()` right after
//! the issuance step named in `LANYARD_CRASH_AT` (intent, signed, recorded), as a power cut would.
//! Prints the serial and the certificate only once `issue` has returned.
#![forbid(unsafe_code)]

use std::sync::Arc;

use ca::{Authority, IssuanceStep, IssueRequest, Passphrase, Policy, Profile, Store};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().ok_or_else(|| anyhow::anyhow!("usage: crash-issue DB_URL CSR_HEX"))?;
    let csr = hex::decode(args.next().ok_or_else(|| anyhow::anyhow!("usage: crash-issue DB_URL CSR_HEX"))?)?;
    let pass = Passphrase::from_env()?.ok_or_else(|| anyhow::anyhow!("LANYARD_CA_PASSPHRASE not set"))?;
    let crash_at = match std::env::var("LANYARD_CRASH_AT").as_deref() {
        Ok("intent") => Some(IssuanceStep::IntentRecorded),
        Ok("signed") => Some(IssuanceStep::Signed),
        Ok("recorded") => Some(IssuanceStep::Recorded),
        _ => None,
    };
    let store = Store::open(&url).await?;
    let mut auth = Authority::load(store, Policy::default(), &pass).await?;
    auth.set_step_hook(Arc::new(move |step| {
        if Some(step) == crash_at {
            std::process::abort();
        }
    }));
    let issued = auth
        .issue(IssueRequest {
            csr: &csr,
            profile: Profile::TlsServer,
            requester: "crash-test",
            lifetime: None,
            authorized: None,
        })
        .await?;
    println!("{}", issued.serial.to_hex());
    print!("{}", issued.pem_chain());
    Ok(())
}
