//! The IdP's discovery document and the endpoints headgate uses, with configured endpoints overriding it.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::config::OidcConfig;
use crate::http_client::{HttpClient, HttpError};

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The fields of `/.well-known/openid-configuration` headgate reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProviderMetadata {
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
    #[serde(default)]
    pub backchannel_logout_supported: Option<bool>,
}

/// The endpoints a sign-in needs, resolved from configuration and discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub authorization: Url,
    pub token: Url,
    pub jwks: Url,
    pub userinfo: Option<Url>,
    pub end_session: Option<Url>,
    /// Signing algorithms the IdP says it uses (empty when unknown).
    pub signing_algs: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "cannot fetch the IdP's discovery document {url}: {source}; check oidc.issuer, or set \
         oidc.authorization_endpoint, oidc.token_endpoint and oidc.jwks_uri for an IdP without discovery"
    )]
    Fetch { url: String, source: HttpError },
    #[error(
        "the IdP's discovery document {url} answered HTTP {status}; check oidc.issuer (it must be the exact \
         issuer, e.g. with the realm path for Keycloak)"
    )]
    Status { url: String, status: u16 },
    #[error("the IdP's discovery document {url} is not valid JSON ({detail})")]
    Json { url: String, detail: String },
    #[error(
        "the IdP's discovery document names issuer {found:?}, but oidc.issuer is {configured:?}: set oidc.issuer \
         to exactly the IdP's issuer"
    )]
    IssuerMismatch { found: String, configured: String },
    #[error(
        "the IdP's discovery document {url} has no {field}: set oidc.{field} in the configuration"
    )]
    Missing { url: String, field: &'static str },
    #[error("{0} (retrying shortly)")]
    Cached(String),
    #[error("the IdP's discovery document {url} has an invalid {field} ({value:?})")]
    BadUrl {
        url: String,
        field: &'static str,
        value: String,
    },
}

/// Fetch and read the discovery document.
pub async fn fetch(
    http: &HttpClient,
    oidc: &OidcConfig,
) -> Result<ProviderMetadata, DiscoveryError> {
    let url = oidc.discovery_url();
    let r = http
        .get(&url, &[("accept", "application/json")], TIMEOUT)
        .await
        .map_err(|source| DiscoveryError::Fetch {
            url: url.clone(),
            source,
        })?;
    if !r.status.is_success() {
        return Err(DiscoveryError::Status {
            url,
            status: r.status.as_u16(),
        });
    }
    serde_json::from_slice(&r.body).map_err(|e| DiscoveryError::Json {
        url,
        detail: e.to_string(),
    })
}

/// Merge configured endpoints over the discovery document. `meta` is `None` when every needed endpoint is
/// configured and discovery was not fetched.
pub fn resolve(
    oidc: &OidcConfig,
    meta: Option<&ProviderMetadata>,
) -> Result<Endpoints, DiscoveryError> {
    let url = oidc.discovery_url();
    let empty = ProviderMetadata::default();
    let m = meta.unwrap_or(&empty);
    if meta.is_some() && m.issuer.is_none() {
        return Err(DiscoveryError::Missing {
            url: url.clone(),
            field: "issuer",
        });
    }
    if let Some(found) = &m.issuer
        && found != &oidc.issuer
    {
        return Err(DiscoveryError::IssuerMismatch {
            found: found.clone(),
            configured: oidc.issuer.clone(),
        });
    }
    let pick = |manual: &Option<Url>,
                found: &Option<String>,
                field: &'static str|
     -> Result<Option<Url>, DiscoveryError> {
        if let Some(u) = manual {
            return Ok(Some(u.clone()));
        }
        match found {
            None => Ok(None),
            Some(v) => match Url::parse(v) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(Some(u)),
                _ => Err(DiscoveryError::BadUrl {
                    url: url.clone(),
                    field,
                    value: v.clone(),
                }),
            },
        }
    };
    let e = &oidc.endpoints;
    let required = |u: Option<Url>, field: &'static str| {
        u.ok_or(DiscoveryError::Missing {
            url: url.clone(),
            field,
        })
    };
    Ok(Endpoints {
        authorization: required(
            pick(
                &e.authorization_endpoint,
                &m.authorization_endpoint,
                "authorization_endpoint",
            )?,
            "authorization_endpoint",
        )?,
        token: required(
            pick(&e.token_endpoint, &m.token_endpoint, "token_endpoint")?,
            "token_endpoint",
        )?,
        jwks: required(pick(&e.jwks_uri, &m.jwks_uri, "jwks_uri")?, "jwks_uri")?,
        userinfo: pick(
            &e.userinfo_endpoint,
            &m.userinfo_endpoint,
            "userinfo_endpoint",
        )?,
        end_session: pick(
            &e.end_session_endpoint,
            &m.end_session_endpoint,
            "end_session_endpoint",
        )?,
        signing_algs: m.id_token_signing_alg_values_supported.clone(),
    })
}

/// Discovery when needed, then the resolved endpoints.
pub async fn discover(
    http: &HttpClient,
    oidc: &OidcConfig,
) -> Result<(Endpoints, Option<ProviderMetadata>), DiscoveryError> {
    if oidc.endpoints.complete() {
        // Everything needed is configured: an IdP without discovery works, and none is fetched.
        return Ok((resolve(oidc, None)?, None));
    }
    let meta = fetch(http, oidc).await?;
    Ok((resolve(oidc, Some(&meta))?, Some(meta)))
}
