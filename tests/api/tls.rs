//! HTTPS on the listener (`server.tls`): the configured certificate is served, a rotated one
//! is picked up without a restart, a half-rotated pair is not used, and a plain listener beyond
//! loopback must be declared deliberate.

use crate::helpers::{config_toml, start_world, World};
use std::path::Path;
use std::time::{Duration, Instant};
use sync_gateway::{Application, Config};

/// A self-signed certificate for `localhost`, and its key (PEM).
fn localhost_certificate() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

fn config(world: &World, dir: &Path, extra: &[(String, String)]) -> Config {
    Config::from_toml_and_env(
        &config_toml(world, &dir.join("audit.jsonl"), extra),
        [(
            "SYNC_GATEWAY__ENTRA__CLIENT_SECRET".to_string(),
            world.secret.clone(),
        )],
    )
    .unwrap()
}

fn tls_keys(dir: &Path) -> Vec<(String, String)> {
    vec![(
        "server.tls".into(),
        format!(
            "{{ certificate_file = {:?}, private_key_file = {:?} }}",
            dir.join("tls.crt"),
            dir.join("tls.key")
        ),
    )]
}

/// A client that trusts only `cert_pem`.
fn client_trusting(cert_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_listener_serves_https_and_picks_up_a_rotated_certificate() {
    let world = start_world().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert1, key1) = localhost_certificate();
    std::fs::write(dir.path().join("tls.crt"), &cert1).unwrap();
    std::fs::write(dir.path().join("tls.key"), &key1).unwrap();
    let app = Application::build(config(&world, dir.path(), &tls_keys(dir.path())))
        .await
        .unwrap();
    let url = format!("https://localhost:{}/healthz", app.port());
    let plain = format!("http://127.0.0.1:{}/healthz", app.port());
    let handle = app.handle();
    let running = tokio::spawn(app.run_until_stopped());

    let first = client_trusting(&cert1);
    assert_eq!(first.get(&url).send().await.unwrap().status(), 200);
    // Plain HTTP on the TLS port gets no answer.
    assert!(reqwest::get(&plain).await.is_err());

    // Rotation: the key first (a half-rotated pair keeps the old certificate serving) ...
    let (cert2, key2) = localhost_certificate();
    std::fs::write(dir.path().join("tls.key"), &key2).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        client_trusting(&cert1)
            .get(&url)
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "a half-rotated pair replaced the certificate"
    );
    // ... then the certificate: new connections get the new one, without a restart.
    std::fs::write(dir.path().join("tls.crt"), &cert2).unwrap();
    let second = client_trusting(&cert2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = second.get(&url).send().await {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        client_trusting(&cert1).get(&url).send().await.is_err(),
        "the old certificate is still served"
    );
    handle.stop(true).await;
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_key_that_does_not_belong_to_the_certificate_stops_the_start_naming_the_key() {
    let world = start_world().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = localhost_certificate();
    let (_, other_key) = localhost_certificate();
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), other_key).unwrap();
    match Application::build(config(&world, dir.path(), &tls_keys(dir.path()))).await {
        Err(e) => assert!(e.to_string().contains("server.tls.private_key_file"), "{e}"),
        Ok(_) => panic!("the gateway started with a key of another certificate"),
    }
}

#[tokio::test]
async fn a_plain_listener_beyond_loopback_must_be_declared_deliberate() {
    let world = start_world().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = |extra: &[(&str, &str)]| {
        let mut keys: Vec<(String, String)> =
            vec![("server.listen".into(), "\"0.0.0.0:0\"".into())];
        keys.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Config::from_toml_and_env(
            &config_toml(&world, &dir.path().join("audit.jsonl"), &keys),
            [(
                "SYNC_GATEWAY__ENTRA__CLIENT_SECRET".to_string(),
                world.secret.clone(),
            )],
        )
    };
    let refused = listen(&[]).unwrap_err().to_string();
    assert!(refused.contains("server.listen"), "{refused}");
    assert!(
        refused.contains("server.plaintext_behind_proxy"),
        "{refused}"
    );
    assert!(listen(&[("server.plaintext_behind_proxy", "true")]).is_ok());
}
