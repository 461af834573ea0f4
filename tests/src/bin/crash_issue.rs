//! Test helper: loads the CA from a database, issues one certificate and calls `abort()` right after
//! the issuance step named in `LANYARD_CRASH_AT` (intent, signed, recorded, finalized), as a power
//! cut would. Prints the serial and the certificate only once issuance has returned.
//!
//! `crash-issue DB_URL CSR_HEX` issues through [`Authority::issue`]; `crash-issue --finalize DB_URL
//! CSR_HEX ORDER_ID ACCOUNT_ID` finalizes that ACME order through the registration authority
//! ([`Registration::finalize`]), the path the ACME server's finalize handler takes.
#![forbid(unsafe_code)]

use std::sync::Arc;

use anyhow::Context;
use ca::ra::{FinalizeRequest, Registration};
use ca::{Authority, IssuanceStep, IssueRequest, Passphrase, Policy, Profile, Store};

const USAGE: &str = "usage: crash-issue [--finalize] DB_URL CSR_HEX [ORDER_ID ACCOUNT_ID]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    let finalize = args.next_if(|a| a == "--finalize").is_some();
    let url = args.next().context(USAGE)?;
    let csr = hex::decode(args.next().context(USAGE)?)?;
    let pass = Passphrase::from_env()?.ok_or_else(|| anyhow::anyhow!("LANYARD_CA_PASSPHRASE not set"))?;
    let crash_at = match std::env::var("LANYARD_CRASH_AT").as_deref() {
        Ok("intent") => Some(IssuanceStep::IntentRecorded),
        Ok("signed") => Some(IssuanceStep::Signed),
        Ok("recorded") => Some(IssuanceStep::Recorded),
        Ok("finalized") => Some(IssuanceStep::Finalized),
        _ => None,
    };
    let store = Store::open(&url).await?;
    let mut auth = Authority::load(store, Policy::default(), &pass).await?;
    auth.set_step_hook(Arc::new(move |step| {
        if Some(step) == crash_at {
            std::process::abort();
        }
    }));
    let issued = if finalize {
        let order_id = args.next().context(USAGE)?;
        let account_id = args.next().context(USAGE)?;
        let account = auth.store().acme_account(&account_id).await?.context("no such account")?;
        let ra = Registration::open(Arc::new(auth)).await?;
        let render = |e: &ca::CaError| serde_json::json!({ "detail": e.to_string() }).to_string();
        let done = ra
            .finalize(FinalizeRequest {
                order_id: &order_id,
                account: &account,
                csr: ca::parse_and_verify_csr(&csr)?,
                render_problem: &render,
            })
            .await?;
        done.certificate
    } else {
        auth.issue(IssueRequest {
            csr: &csr,
            profile: Profile::TlsServer,
            requester: "crash-test",
            lifetime: None,
            authorized: None,
        })
        .await?
    };
    println!("{}", issued.serial.to_hex());
    print!("{}", issued.pem_chain());
    Ok(())
}
