//! `lanyard-ca` as an operator runs it: init, serve, status, imports, and every way it must refuse.

use std::os::unix::fs::PermissionsExt;

use tests::{https_get, pem_fingerprint, run_ca, start_ca};

const PASS: (&str, &str) = ("LANYARD_CA_PASSPHRASE", "end to end passphrase");

/// No file in the data directory, nor the database, holds a plaintext private key.
fn assert_no_plaintext_keys(dir: &std::path::Path) {
    for e in std::fs::read_dir(dir).expect("ls") {
        let p = e.expect("entry").path();
        let bytes = std::fs::read(&p).expect("read");
        let text = String::from_utf8_lossy(&bytes);
        for marker in ["BEGIN PRIVATE KEY", "BEGIN EC PRIVATE KEY", "BEGIN RSA PRIVATE KEY"] {
            assert!(!text.contains(marker), "{} holds a plaintext key", p.display());
        }
        if p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".key.pem")) {
            assert!(text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
            assert_eq!(std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777, 0o600);
        }
    }
}

#[tokio::test]
async fn serve_on_an_empty_directory_bootstraps_a_dev_ca_clients_can_pin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_s = data.to_str().expect("utf8");
    let ca = start_ca(&["--data-dir", data_s], &[]).expect("start");
    assert!(ca.banner.contains("root fingerprint:   sha256:"), "{}", ca.banner);
    assert!(ca.banner.contains("root.pem"), "{}", ca.banner);
    let printed = ca.banner.split("sha256:").nth(1).expect("fp").lines().next().expect("line").trim().to_owned();

    // Bootstrap: fetch the roots without verification, compare with the pinned fingerprint.
    let roots = https_get(ca.addr, "localhost", "/roots.pem", None).await.expect("roots");
    assert_eq!(roots.status, 200);
    assert_eq!(roots.content_type, "application/pem-certificate-chain");
    let roots_pem = String::from_utf8(roots.body).expect("utf8");
    assert_eq!(pem_fingerprint(&roots_pem).expect("fp"), printed);
    assert_eq!(std::fs::read_to_string(data.join("root.pem")).expect("root.pem"), roots_pem);
    let fp = https_get(ca.addr, "localhost", "/root-fingerprint", None).await.expect("fp");
    let v: serde_json::Value = serde_json::from_slice(&fp.body).expect("json");
    assert_eq!(v["sha256"], printed.as_str());

    // From now on, verify the server against the pinned root, by DNS name and by IP.
    for host in ["localhost", "127.0.0.1"] {
        let h = https_get(ca.addr, host, "/health", Some(&roots_pem)).await.expect("verified health");
        assert_eq!(h.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&h.body).expect("json");
        assert_eq!(v["status"], "ok");
    }
    let chain = https_get(ca.addr, "localhost", "/chain.pem", Some(&roots_pem)).await.expect("chain");
    assert_eq!(chain.status, 200);
    // The server's own certificate is issued by the active intermediate in /chain.pem.
    let chain_pem = String::from_utf8(chain.body).expect("utf8");
    assert_eq!(pem_fingerprint(&chain_pem).expect("fp"), ca::sha256_fingerprint(&chain.peer_chain[1]));

    let missing = https_get(ca.addr, "localhost", "/nope", Some(&roots_pem)).await.expect("404");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.content_type, "application/problem+json");
    let p: serde_json::Value = serde_json::from_slice(&missing.body).expect("problem");
    assert_eq!(p["status"], 404);

    drop(ca);
    assert_no_plaintext_keys(&data);
    // Restart on the same directory: same root, no re-initialization.
    let again = start_ca(&["--data-dir", data_s], &[]).expect("restart");
    assert!(!again.banner.contains("initializing"), "{}", again.banner);
    let roots2 = https_get(again.addr, "localhost", "/roots.pem", Some(&roots_pem)).await.expect("roots");
    assert_eq!(String::from_utf8(roots2.body).expect("utf8"), roots_pem);

    let (ok, out, _) = run_ca(&["status", "--data-dir", data_s], &[]).expect("status");
    assert!(ok);
    assert!(out.contains("intermediate  active") && out.contains("root          active"), "{out}");
    assert!(out.contains(&printed), "{out}");
    assert!(out.contains("certificates: 2 issued"), "{out}");
}

/// A fresh init leaves a 0700 data directory with 0600 database files; a data directory others
/// can get into is refused with its path, its mode and the fix; a bad DNS suffix stops the CA.
#[test]
fn data_directory_permissions_and_bad_suffixes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let d = data.to_str().expect("utf8");
    let (ok, _, err) = run_ca(&["init", "--data-dir", d], &[PASS]).expect("init");
    assert!(ok, "{err}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("lanyard.db")), 0o600);
    for f in ["lanyard.db-wal", "lanyard.db-shm"] {
        if data.join(f).exists() {
            assert_eq!(mode(&data.join(f)), 0o600, "{f}");
        }
    }

    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o750)).expect("chmod");
    let (ok, _, err) = run_ca(&["status", "--data-dir", d], &[]).expect("status");
    assert!(!ok, "a group-readable data directory must be refused");
    assert!(err.contains(d) && err.contains("0750") && err.contains(&format!("chmod 700 {d}")), "{err}");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let (ok, _, err) = run_ca(&["status", "--data-dir", d], &[]).expect("status");
    assert!(ok, "{err}");

    let cfg = dir.path().join("bad-suffix.toml");
    std::fs::write(&cfg, "[policy.dns]\ndeny_suffixes = [\"*.corp.example\"]\n").expect("write");
    let (ok, _, err) = run_ca(&["--config", cfg.to_str().expect("utf8"), "status", "--data-dir", d], &[]).expect("run");
    assert!(!ok && err.contains("DNS suffix") && err.contains("wildcards are not allowed"), "{err}");
}

#[tokio::test]
async fn init_then_serve_with_operator_passphrase_and_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let d = data.to_str().expect("utf8");

    // init without a passphrase: refused, nothing created.
    let (ok, _, err) = run_ca(&["init", "--data-dir", d], &[]).expect("run");
    assert!(!ok);
    assert!(err.contains("LANYARD_CA_PASSPHRASE"), "{err}");
    assert!(!data.join("root.pem").exists());
    // A too-short passphrase is refused.
    let (ok, _, err) = run_ca(&["init", "--data-dir", d], &[("LANYARD_CA_PASSPHRASE", "short")]).expect("run");
    assert!(!ok && err.contains("at least 12"), "{err}");

    let (ok, out, err) = run_ca(&["init", "--data-dir", d, "--key-algorithm", "p384"], &[PASS]).expect("init");
    assert!(ok, "{err}");
    assert!(out.contains("root fingerprint"), "{out}");
    assert_no_plaintext_keys(&data);
    let root_pem = std::fs::read_to_string(data.join("root.pem")).expect("root");
    // The root key file is openssl-readable with the passphrase, and only with it.
    let key = data.join("root.key.pem");
    let o = std::process::Command::new("openssl")
        .args(["pkey", "-in", key.to_str().expect("utf8"), "-passin", "env:LANYARD_CA_PASSPHRASE", "-noout"])
        .env(PASS.0, PASS.1)
        .output()
        .expect("openssl");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // init twice: refused, the existing root untouched.
    let (ok, _, err) = run_ca(&["init", "--data-dir", d], &[PASS]).expect("run");
    assert!(!ok && err.contains("already initialized"), "{err}");
    assert_eq!(std::fs::read_to_string(data.join("root.pem")).expect("root"), root_pem);

    // serve with a wrong passphrase: clear error, non-zero exit.
    let e = start_ca(&["--data-dir", d], &[("LANYARD_CA_PASSPHRASE", "not the right passphrase")]).expect_err("wrong");
    assert!(e.to_string().contains("wrong passphrase"), "{e}");
    // serve without any passphrase on an initialized CA: refused.
    let e = start_ca(&["--data-dir", d], &[]).expect_err("missing");
    assert!(e.to_string().contains("LANYARD_CA_PASSPHRASE"), "{e}");

    // A bad configuration file: clear error, non-zero exit.
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:1\"\nno_such_setting = true\n").expect("write");
    let (ok, _, err) = run_ca(&["--config", cfg.to_str().expect("utf8"), "status"], &[]).expect("run");
    assert!(!ok && err.contains("invalid config file") && err.contains("no_such_setting"), "{err}");
    std::fs::write(&cfg, "[policy]\ntrust_domain = \"Not Valid\"\n").expect("write");
    let e = start_ca(&["--config", cfg.to_str().expect("utf8"), "--data-dir", d], &[PASS]).expect_err("bad policy");
    assert!(e.to_string().contains("trust_domain"), "{e}");

    // The right passphrase serves, from a config file with a passphrase file.
    let pass_file = dir.path().join("pass");
    std::fs::write(&pass_file, format!("{}\n", PASS.1)).expect("write");
    std::fs::write(
        &cfg,
        format!("data_dir = \"{d}\"\npassphrase_file = \"{}\"\nlog_format = \"json\"\n", pass_file.display()),
    )
    .expect("write");
    let ca = start_ca(&["--config", cfg.to_str().expect("utf8")], &[]).expect("serve");
    let h = https_get(ca.addr, "localhost", "/health", Some(&root_pem)).await.expect("health");
    assert_eq!(h.status, 200);
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let o = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

#[tokio::test]
async fn import_an_external_hierarchy_with_the_root_key_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    // An "existing" offline root and an intermediate made by openssl, not by Lanyard.
    std::fs::write(
        p.join("ext.cnf"),
        "[root]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n\
         [int]\nbasicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .expect("cnf");
    openssl(
        p,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "root.key",
            "-out",
            "root.crt",
            "-days",
            "3650",
            "-subj",
            "/O=Corp/CN=Corp Offline Root",
            "-extensions",
            "root",
            "-config",
            "ext.cnf",
        ],
    );
    // openssl req -x509 needs a config with a [req] section; the extension file has none, so
    // add one on the fly for the intermediate CSR.
    openssl(p, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "int.key"]);
    openssl(p, &["req", "-new", "-key", "int.key", "-subj", "/O=Corp/CN=Corp Lanyard Intermediate", "-out", "int.csr"]);
    openssl(
        p,
        &[
            "x509",
            "-req",
            "-in",
            "int.csr",
            "-CA",
            "root.crt",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-days",
            "365",
            "-extfile",
            "ext.cnf",
            "-extensions",
            "int",
            "-out",
            "int.crt",
        ],
    );
    let data = p.join("data");
    let d = data.to_str().expect("utf8");

    // A key that does not belong to the intermediate is refused, and nothing is created.
    openssl(p, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "other.key"]);
    let path = |a: &str| p.join(a).to_string_lossy().into_owned();
    let (ok, _, err) = run_ca(
        &[
            "init",
            "--data-dir",
            d,
            "--import-root",
            &path("root.crt"),
            "--import-intermediate",
            &path("int.crt"),
            "--import-intermediate-key",
            &path("other.key"),
        ],
        &[PASS],
    )
    .expect("run");
    assert!(!ok && err.contains("does not belong"), "{err}");
    let (_, status, _) = run_ca(&["status", "--data-dir", d], &[]).expect("status");
    assert!(status.contains("not initialized"), "{status}");

    let (ok, out, err) = run_ca(
        &[
            "init",
            "--data-dir",
            d,
            "--import-root",
            &path("root.crt"),
            "--import-intermediate",
            &path("int.crt"),
            "--import-intermediate-key",
            &path("int.key"),
        ],
        &[PASS],
    )
    .expect("run");
    assert!(ok, "{err}");
    assert!(!out.contains("root key:"), "{out}");
    assert!(!data.join("root.key.pem").exists(), "the root key must stay offline");
    assert_no_plaintext_keys(&data);

    let ca = start_ca(&["--data-dir", d], &[PASS]).expect("serve");
    let root_pem = std::fs::read_to_string(p.join("root.crt")).expect("root");
    let h = https_get(ca.addr, "localhost", "/health", Some(&root_pem)).await.expect("chains to the imported root");
    assert_eq!(h.status, 200);
    let roots = https_get(ca.addr, "localhost", "/roots.pem", Some(&root_pem)).await.expect("roots");
    assert_eq!(
        pem_fingerprint(&String::from_utf8(roots.body).expect("utf8")).expect("fp"),
        pem_fingerprint(&root_pem).expect("fp")
    );
}
