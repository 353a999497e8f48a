//! What a hospital may be called. Names travel to logs, metrics labels, the
//! store and the control panel, so they are checked where they enter: the
//! hospital refuses to start with a bad one, the coordinator refuses a
//! hello that carries one.

/// Longest accepted hospital name.
pub const MAX_NAME_LEN: usize = 64;

/// The rule, for error messages.
pub const NAME_RULE: &str =
    "1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit";

/// `Ok` for a valid hospital name, else why not.
pub fn check_hospital_name(name: &str) -> Result<(), String> {
    let starts_well = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.len() <= MAX_NAME_LEN && starts_well && name.chars().all(allowed) {
        Ok(())
    } else {
        Err(format!(
            "hospital name {} is not allowed: use {NAME_RULE}",
            shown(name)
        ))
    }
}

/// Longest free-text field of a hello (kind, attack, held-out fingerprint).
pub const MAX_LABEL_LEN: usize = 128;

/// Every field of a hello a peer chose, checked before any of them is
/// logged, published or put into a refusal's reason.
pub fn check_hello(info: &crate::messages::HospitalInfo) -> Result<(), String> {
    check_hospital_name(&info.name)?;
    let task_ok = !info.task.is_empty()
        && info.task.len() <= MAX_NAME_LEN
        && info
            .task
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !task_ok {
        return Err(format!(
            "task name {} is not allowed: task names use a-z, 0-9 and _ only",
            shown(&info.task)
        ));
    }
    for (field, value) in [
        ("kind", Some(&info.kind)),
        ("attack", info.attack.as_ref()),
        ("held_out", info.held_out.as_ref()),
    ] {
        if let Some(value) = value {
            let printable = value.chars().all(|c| c.is_ascii_graphic() || c == ' ');
            if !printable || value.len() > MAX_LABEL_LEN {
                return Err(format!(
                    "the hello's {field} {} is not allowed: printable ASCII, at most {MAX_LABEL_LEN} characters",
                    shown(value)
                ));
            }
        }
    }
    Ok(())
}

/// Any name a peer sent, safe to put in a log line or message: control
/// characters and quotes escaped, cut short.
pub fn printable(name: &str) -> String {
    let escaped: String = name.escape_debug().take(MAX_NAME_LEN + 16).collect();
    let cut = if escaped.len() < name.escape_debug().count() {
        "..."
    } else {
        ""
    };
    format!("{escaped}{cut}")
}

/// Prose a peer sent (a refusal's reason), safe for a log line and still
/// readable: printable ASCII kept as is, anything else shown as '?'.
pub fn plain(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .collect()
}

/// [`printable`], quoted.
pub fn shown(name: &str) -> String {
    format!("\"{}\"", printable(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_a_small_safe_alphabet() {
        for good in ["breast_cancer-1", "St.Mary-2", "h1", &"a".repeat(64)] {
            assert_eq!(check_hospital_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "-lead",
            ".hidden",
            "has space",
            "<img src=x onerror=alert(1)>",
            "new\nline",
            "quote\"",
            "é",
            &"a".repeat(65),
        ] {
            let e = check_hospital_name(bad).unwrap_err();
            assert!(e.contains(NAME_RULE), "{e}");
            assert!(!e.contains('\n'), "escaped: {e}");
        }
        assert_eq!(shown("a\nb"), "\"a\\nb\"");
        assert!(shown(&"x".repeat(500)).ends_with("...\""));
    }
}
