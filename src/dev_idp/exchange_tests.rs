//! The new ways in, at the state level: private_key_jwt and public clients, token
//! exchange and jwt-bearer, each with the refusals RFC 6749, 7523 and 8693 prescribe.

#![allow(clippy::unwrap_used)]

use super::super::*;
use crate::dev_idp::clients::{CLIENT_ASSERTION_TYPE, Clients, Presented, Redacted};
use crate::dev_idp::jwt::PublicKey;
use crate::dev_idp::protocol::ClientCredentials;
use crate::idp::{SigningKey, assertion_claims};
use crate::test_keys::{Kind, generate};
use secrecy::{ExposeSecret, SecretString};

const AUD: &str = "http://127.0.0.1:1/token";
const EXCHANGE: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange";
const JWT: &str = "urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt";
const LISTED: &str =
    "eyJhbGciOiJub25lIn0.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDphcHAifQ.x";

struct Idp {
    state: State,
    key: SigningKey,
}

fn idp() -> Idp {
    let keys = generate(Kind::EcPkcs8);
    let public = PublicKey::from_pem(&keys.public_pem()).unwrap();
    let config = Config {
        clients: Clients {
            id: "dev-client".to_owned(),
            secret: "dev-secret".to_owned(),
            key: Some(public.clone()),
            public_id: Some("spa".to_owned()),
        },
        access_ttl: Duration::from_secs(300),
        reuse_grace: Duration::ZERO,
        rotation: true,
        omit_expires_in: false,
        exp_in_millis: false,
        no_jti: false,
        bearer_key: Some(public),
        bearer_issuer: "dev-client".to_owned(),
        subject_tokens: vec![LISTED.to_owned()],
        login: Default::default(),
    };
    let key = SigningKey::from_pem(&SecretString::from(keys.private_pem()), None, None).unwrap();
    Idp {
        state: State::new(config, Duration::ZERO),
        key,
    }
}

impl Idp {
    fn jwt(&self, iss: &str, aud: &str) -> String {
        let claims = assertion_claims(iss, iss, aud, Duration::from_secs(60));
        self.key.sign(&claims).unwrap().expose_secret().to_owned()
    }

    fn token(&mut self, client: &Presented, body: &str) -> Result<Issued, TokenError> {
        let params = Params::parse(body.as_bytes()).unwrap();
        self.state
            .token(SystemTime::now(), client, &params, &[AUD.to_owned()])
    }
}

fn secret() -> Presented {
    Presented::Secret(ClientCredentials {
        id: "dev-client".to_owned(),
        secret: "dev-secret".to_owned(),
    })
}

fn assertion(jwt: String, kind: Option<&str>) -> Presented {
    Presented::Assertion {
        client_id: None,
        assertion_type: kind.map(str::to_owned),
        assertion: Redacted(jwt),
    }
}

fn code(result: Result<Issued, TokenError>) -> &'static str {
    result.err().unwrap().code()
}

#[test]
fn private_key_jwt_authenticates_once_per_assertion() {
    let mut idp = idp();
    let jwt = idp.jwt("dev-client", AUD);
    let client = assertion(jwt, Some(CLIENT_ASSERTION_TYPE));
    let issued = idp.token(&client, "grant_type=client_credentials").unwrap();
    assert_eq!(issued.outcome, Outcome::ClientCredentials);
    assert_eq!(
        code(idp.token(&client, "grant_type=client_credentials")),
        "invalid_client"
    );
    let wrong_aud = assertion(
        idp.jwt("dev-client", "https://elsewhere/token"),
        Some(CLIENT_ASSERTION_TYPE),
    );
    assert_eq!(
        code(idp.token(&wrong_aud, "grant_type=client_credentials")),
        "invalid_client"
    );
    let other_client = assertion(idp.jwt("someone", AUD), Some(CLIENT_ASSERTION_TYPE));
    assert_eq!(
        code(idp.token(&other_client, "grant_type=client_credentials")),
        "invalid_client"
    );
    let bad_type = assertion(idp.jwt("dev-client", AUD), Some("urn:other"));
    assert_eq!(
        code(idp.token(&bad_type, "grant_type=client_credentials")),
        "invalid_client"
    );
    let no_type = assertion(idp.jwt("dev-client", AUD), None);
    assert_eq!(
        code(idp.token(&no_type, "grant_type=client_credentials")),
        "invalid_request"
    );
    let stats = idp.state.stats();
    assert_eq!((stats.client_assertions, stats.assertion_replays), (1, 1));
    assert_eq!((stats.invalid_client, stats.invalid_request), (4, 1));
}

#[test]
fn a_public_client_may_refresh_but_not_use_client_credentials() {
    let mut idp = idp();
    let token = idp.state.mint_family(None, None);
    let spa = Presented::Public("spa".to_owned());
    let issued = idp
        .token(
            &spa,
            &format!("grant_type=refresh_token&refresh_token={token}"),
        )
        .unwrap();
    assert_eq!(
        idp.state
            .whoami(SystemTime::now(), &issued.access_token)
            .unwrap()
            .client_id,
        "spa"
    );
    assert_eq!(
        code(idp.token(&spa, "grant_type=client_credentials")),
        "invalid_client"
    );
    let stranger = Presented::Public("dev-client".to_owned());
    let next = issued.refresh_token.unwrap();
    assert_eq!(
        code(idp.token(
            &stranger,
            &format!("grant_type=refresh_token&refresh_token={next}")
        )),
        "invalid_client",
        "a confidential client must authenticate"
    );
}

#[test]
fn token_exchange_accepts_own_and_listed_subject_tokens_only() {
    let mut idp = idp();
    let listed = format!(
        "{EXCHANGE}&subject_token={LISTED}&subject_token_type={JWT}&resource=https%3A%2F%2Fa&resource=https%3A%2F%2Fb"
    );
    let issued = idp.token(&secret(), &listed).unwrap();
    assert_eq!(
        issued.issued_token_type,
        Some("urn:ietf:params:oauth:token-type:access_token")
    );
    let who = idp
        .state
        .whoami(SystemTime::now(), &issued.access_token)
        .unwrap();
    assert_eq!(who.sub, "system:serviceaccount:default:app");
    // The token just issued is itself a valid subject token, as an access token.
    let own = format!(
        "{EXCHANGE}&subject_token={}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token",
        issued.access_token
    );
    let spa = Presented::Public("spa".to_owned());
    assert_eq!(
        idp.token(&spa, &own).unwrap().outcome,
        Outcome::TokenExchange
    );
    let refused = [
        format!("{EXCHANGE}&subject_token=unknown&subject_token_type={JWT}"),
        format!(
            "{EXCHANGE}&subject_token={LISTED}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aid_token"
        ),
        format!("{EXCHANGE}&subject_token={LISTED}"),
        format!("{listed}&requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Asaml2"),
        format!("{listed}&actor_token=unknown&actor_token_type={JWT}"),
        format!("{listed}&actor_token={LISTED}"),
    ];
    for body in &refused {
        assert_eq!(
            code(idp.token(&secret(), body)),
            "invalid_request",
            "{body}"
        );
    }
    assert_eq!(
        code(idp.token(&Presented::Nothing, &listed)),
        "invalid_client"
    );
    let stats = idp.state.stats();
    assert_eq!((stats.token_exchange_grants, stats.invalid_request), (2, 6));
}

#[test]
fn jwt_bearer_needs_the_trusted_issuer_and_a_fresh_assertion() {
    let mut idp = idp();
    let jwt = idp.jwt("dev-client", AUD);
    let body =
        format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={jwt}");
    // Client authentication is optional for this grant (RFC 7523 section 2.1).
    let issued = idp.token(&Presented::Nothing, &body).unwrap();
    assert_eq!(issued.outcome, Outcome::JwtBearer);
    assert_eq!(
        code(idp.token(&secret(), &body)),
        "invalid_grant",
        "replayed"
    );
    let stranger = idp.jwt("someone-else", AUD);
    let body = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={stranger}"
    );
    assert_eq!(code(idp.token(&secret(), &body)), "invalid_grant");
    let missing = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
    assert_eq!(code(idp.token(&secret(), missing)), "invalid_request");
    let stats = idp.state.stats();
    assert_eq!(
        (
            stats.jwt_bearer_grants,
            stats.assertion_replays,
            stats.invalid_grant
        ),
        (1, 1, 2)
    );
}
