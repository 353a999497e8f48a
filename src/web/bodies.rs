//! The JSON bodies the API accepts, parsed from untrusted bytes (the
//! handlers read at most `MAX_BODY` bytes first; the fuzz targets call
//! `parse` directly).

use serde::Deserialize;

/// `POST /api/runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    pub rounds: Option<u32>,
    pub tasks: Option<Vec<String>>,
    /// Hospitals to train without (site withdrawal).
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// `POST /api/login`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub token: String,
}

/// Parse a body; the error is worded for the client.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("a JSON body is required".into());
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}
