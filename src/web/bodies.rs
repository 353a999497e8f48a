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
    /// Per task, settings instead of the configured ones (`config::run_settings`).
    #[serde(default)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

/// `POST /api/login`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub token: String,
}

/// Parse a body; the error is worded for the client: it names the field,
/// never a type of the server's code.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("a JSON body is required".into());
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    if !value.is_object() {
        return Err(format!(
            "the body must be a JSON object, got {}",
            crate::config::run_settings::kind(&value)
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        match path.as_str() {
            "." | "" => format!("invalid body: {message}"),
            field => format!("invalid body: `{field}`: {message}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_fields_and_never_the_servers_types() {
        for (body, expected) in [
            (&b"5"[..], "the body must be a JSON object, got a number"),
            (b"[1]", "the body must be a JSON object, got an array"),
            (
                b"{\"rounds\": \"x\"}",
                "invalid body: `rounds`: invalid type: string \"x\", expected u32",
            ),
            (
                b"{\"tasks\": 3}",
                "invalid body: `tasks`: invalid type: integer `3`, expected a sequence",
            ),
            (b"  ", "a JSON body is required"),
        ] {
            let e = parse::<StartBody>(body).unwrap_err();
            assert_eq!(e, expected);
            assert!(!e.contains("StartBody") && !e.contains("struct"), "{e}");
        }
        let e = parse::<StartBody>(b"{\"round\": 1}").unwrap_err();
        assert!(
            e.starts_with("invalid body: `round`: unknown field `round`, expected one of"),
            "{e}"
        );
        assert!(parse::<StartBody>(b"{not json")
            .unwrap_err()
            .starts_with("the body is not valid JSON"));
    }
}
