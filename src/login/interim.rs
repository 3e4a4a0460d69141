//! INTERIM, removed when the broker side of `login` (branch login-broker) is merged:
//! the signatures `deliver` codes against (`client::post_login`, `client::read_key`,
//! `client::url_arg`, `broker::login::adopt_offline`), each refusing plainly.

pub mod client {
    use secrecy::SecretString;

    pub enum ClientError {
        Unreachable(String),
        Broker {
            status: u16,
            error: String,
            message: String,
        },
    }

    pub struct LoginAnswer {
        pub expires_in: u64,
    }

    pub fn url_arg(text: &str) -> Result<String, String> {
        Ok(text.to_owned())
    }

    pub fn read_key(_: Option<&std::path::Path>) -> Result<Option<SecretString>, String> {
        Ok(None)
    }

    pub async fn post_login(
        _: &str,
        _: Option<&SecretString>,
        _: &str,
        _: &[u8],
    ) -> Result<LoginAnswer, ClientError> {
        Err(ClientError::Unreachable(
            "this build has no broker side of login yet".into(),
        ))
    }
}

pub mod login {
    #[derive(Debug, thiserror::Error)]
    pub enum LoginError {
        #[error("{0}")]
        UnknownCredential(String),
        #[error("{0}")]
        NotRefreshGrant(String),
        #[error("{0}")]
        Store(String),
    }

    pub struct Adopted {
        pub expires_in: u64,
    }

    pub async fn adopt_offline(
        _: &crate::config::Config,
        _: &str,
        _: &[u8],
    ) -> Result<Adopted, LoginError> {
        Err(LoginError::Store(
            "this build has no broker side of login yet".into(),
        ))
    }
}
