//! Lifetimes nobody should send: a JWT `exp` in milliseconds with no `expires_in`, and
//! an absurd `expires_in`. The token is served with a sane lifetime, and on the
//! refresh-token grant the rotated refresh token is never lost (a lost one would be
//! resent, spent, and revoke the family).

use std::path::Path;

use serde_json::Value;

use crate::harness::*;

/// An executable `#!/bin/sh` script.
fn script(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn exec_credential(name: &str, command: &str) -> String {
    format!(
        "\n[credentials.{name}]\ngrant = \"exec\"\nexec.command = [\"{command}\"]\n\
         default_lifetime = \"10m\"\nrequired = false\n"
    )
}

/// `expires_in` of a token answer, checked to be within `range`.
fn expires_in(body: &Value, range: std::ops::RangeInclusive<u64>) {
    let left = body["expires_in"].as_u64().unwrap();
    assert!(range.contains(&left), "expires_in {left}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exp_in_milliseconds_loses_no_refresh_token_and_panics_nowhere() {
    let idp = Idp::start(&["--omit-expires-in", "--exp-in-millis"]);
    let dir = tempdir();
    let millis = script(
        dir.path(),
        "millis.sh",
        "exp=$(( ($(date +%s) + 900) * 1000 ))\n\
         payload=$(printf '{\"exp\":%s}' $exp | base64 | tr '+/' '-_' | tr -d '=\\n')\n\
         printf 'eyJhbGciOiJub25lIn0.%s.c2ln' \"$payload\"",
    );
    let absurd = script(
        dir.path(),
        "absurd.sh",
        "printf '{\"access_token\":\"absurd-%s\",\"expires_in\":1e300}' $$",
    );
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(&bootstrap, &idp.refresh_token).unwrap();
    let config = base_config(dir.path())
        + &refresh_credential(
            "x",
            &idp,
            &bootstrap,
            "default_lifetime = \"10m\"\nmin_refresh_interval = \"0s\"",
        )
        + &exec_credential("millis", &millis)
        + &exec_credential("absurd", &absurd);
    let mut broker = Broker::start(dir.path(), &config);

    // The exp cannot be a time: the default lifetime applies.
    let first = broker.token("x").await;
    expires_in(&first, 590..=600);
    let mut seen = vec![first["access_token"].as_str().unwrap().to_owned()];
    for _ in 0..2 {
        let current = seen.last().unwrap().clone();
        let response = broker.refresh("x", Some(&current)).await;
        assert_eq!(response.status(), 200, "{}", broker.proc.logs());
        let body: Value = response.json().await.unwrap();
        seen.push(body["access_token"].as_str().unwrap().to_owned());
    }
    expires_in(&broker.token("millis").await, 590..=600);
    expires_in(&broker.token("absurd").await, 900_000_000..=1_000_000_000);

    // After a restart the chain goes on from the stored (rotated) token.
    assert!(broker.proc.terminate().success());
    let broker = Broker::start(dir.path(), &config);
    let current = broker.access_token("x").await;
    assert_eq!(&current, seen.last().unwrap());
    let response = broker.refresh("x", Some(&current)).await;
    assert_eq!(response.status(), 200, "{}", broker.proc.logs());

    assert_eq!(idp.stat("refresh_grants").await, 4);
    assert_eq!(idp.stat("reuse_detected").await, 0);
    assert_eq!(idp.stat("families_revoked").await, 0);
    let logs = broker.proc.logs();
    assert!(!logs.contains("internal error"), "{logs}");
    assert!(!logs.contains("panicked"), "{logs}");
}
