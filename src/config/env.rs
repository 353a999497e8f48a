//! Environment overrides: `MEDFED_TASKS__BREAST_CANCER__HOSPITALS=3` sets
//! `tasks.breast_cancer.hospitals`. Only variables with a `__` separator are
//! config paths; others (MEDFED_API_TOKEN, ...) are read where they are used.

use super::ConfigError;

const PREFIX: &str = "MEDFED_";

pub fn apply_overrides(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut overrides: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX) && k.contains("__"))
        .collect();
    // Deterministic order regardless of the environment's.
    overrides.sort();
    for (var, raw) in overrides {
        let path: Vec<String> = var[PREFIX.len()..]
            .split("__")
            .map(|p| p.to_ascii_lowercase())
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                message: "empty key segment".into(),
            });
        }
        set_path(table, &path, parse_scalar(&raw)).map_err(|message| ConfigError::Env { var, message })?;
    }
    Ok(())
}

/// A TOML scalar if the text is one (number, boolean, quoted string, array), else a bare string.
fn parse_scalar(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match probe.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty path")?;
    let mut current = table;
    for (depth, key) in parents.iter().enumerate() {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{}` is not a table", path[..=depth].join(".")))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_keys_and_types() {
        let mut t: toml::Table = "[run]\nseed = 1\n".parse().unwrap();
        apply_overrides(
            &mut t,
            vec![
                ("MEDFED_RUN__SEED".into(), "7".into()),
                (
                    "MEDFED_TASKS__BREAST_CANCER__PARTITION__SCHEME".into(),
                    "iid".into(),
                ),
                ("MEDFED_API_TOKEN".into(), "ignored".into()),
                ("PATH".into(), "/bin".into()),
            ],
        )
        .unwrap();
        assert_eq!(t["run"]["seed"].as_integer(), Some(7));
        assert_eq!(
            t["tasks"]["breast_cancer"]["partition"]["scheme"].as_str(),
            Some("iid")
        );
        assert!(!t.contains_key("api_token"));
    }

    #[test]
    fn override_through_a_scalar_is_an_error() {
        let mut t: toml::Table = "[run]\nseed = 1\n".parse().unwrap();
        let e = apply_overrides(&mut t, vec![("MEDFED_RUN__SEED__X".into(), "1".into())]).unwrap_err();
        assert!(e.to_string().contains("MEDFED_RUN__SEED__X"), "{e}");
        assert!(e.to_string().contains("`run.seed` is not a table"), "{e}");
    }
}
